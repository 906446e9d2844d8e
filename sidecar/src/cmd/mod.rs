//! One module per `coded-sidecar` subcommand: its flags and its run function.

pub mod bench;
pub mod chaos;
pub mod eval;
pub mod fetch;
pub mod frontend;
pub mod local;
pub mod overload;
pub mod plot;
pub mod train;
pub mod worker;

use std::path::PathBuf;

use anyhow::Context;

use crate::data::{DEFAULT_DATA_DIR, FashionMnist};

/// Where the dataset comes from; shared by the subcommands that need it.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Folder with Fashion-MNIST's gzip'd IDX files (Debian: dataset-fashion-mnist).
    #[arg(long, env = "CODED_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
}

impl DataArgs {
    pub fn load(&self) -> anyhow::Result<FashionMnist> {
        FashionMnist::load(&self.data_dir).context("loading Fashion-MNIST")
    }
}
