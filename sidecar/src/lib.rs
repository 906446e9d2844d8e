//! coded-sidecar: the data plane of coded-serving.
//!
//! Data flows `data` → `model` (networks, cards, weights) → `coding`
//! (encoders, decoder) → `train` / `eval`; `protocol` speaks KServe v2 and
//! `worker` serves one model over it; `cmd` holds one module per subcommand
//! of the binary.

pub mod bench;
pub mod cmd;
pub mod coding;
pub mod data;
pub mod device;
pub mod eval;
pub mod frontend;
pub mod grpc;
pub mod http;
pub mod local;
pub mod model;
pub mod protocol;
pub mod runtime;
pub mod tls;
pub mod train;
pub mod worker;
