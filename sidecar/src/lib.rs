//! coded-sidecar: the data plane of coded-serving.
