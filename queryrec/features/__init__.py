"""The room training, export and serving share (torch-free, import-linter enforced).

- `model_inputs`: the one feature path, events + request time -> model inputs;
- `time_features`: the Beijing hour and the query age buckets;
- `graph_feeds`: the input layouts of the bundle's two ONNX graphs;
- `bundle_format`: the bundle's layout, manifest check and raw-id maps;
- `bundle_manifest`: the manifest's seal (`manifest.sha256`) and schema (pydantic);
- `schema`, `dataset`: the prepared dataset's schema artifact and its loader.
"""
