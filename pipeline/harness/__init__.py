"""The harness around the product: scenarios, the simulator, load and overhead
measurements and the private local stack. The core (everything outside
pipeline.harness and pipeline.testing) never imports it."""
