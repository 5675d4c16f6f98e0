"""The operators' console: a page served by the app, fed by one event stream."""
