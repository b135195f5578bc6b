"""One contract suite per port, each run on every implementation of that port.

A contract is a base class of pytest tests; a subclass names an implementation
by providing the fixture the base class asks for, and pytest runs every test of
the contract on it (see the README's "Testing API" section for who runs where):

- `blob_store.BlobStoreContract`: fixture `blob_store` (a `BlobStore`);
- `ocr.OcrEngineContract`: fixture `ocr` (an `OcrSetup`: the engine and where it reads);
- `llm.EntityExtractorContract`: fixture `llm` (an `ExtractorSetup`);
- `graph.GraphSinkContract`: fixture `graph` (a `GraphSetup`: the sink and a reader);
- `store.StoreContract`: fixture `database_url` (an empty database for `SqlDocumentStore`);
- `redis_features.RedisFeaturesContract`: fixture `client` (a clean redis-py client).

The tests check what a caller can observe through the port, so an implementation
that disagrees with the others fails them.
"""
