//! Prints the CodedInferenceService CRD, or with `--write` refreshes the
//! committed copies (see `crd::CRD_PATHS`).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use coded_operator::crd::{CRD_PATHS, crd_yaml};

#[derive(Parser)]
#[command(about = "Print or write the CodedInferenceService CRD")]
struct Args {
    /// Write the CRD files under this repository root instead of printing.
    #[arg(long)]
    write: bool,
    /// Repository root; defaults to the workspace this binary was built from.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/.."))]
    root: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let yaml = crd_yaml().context("rendering the CRD")?;
    if !args.write {
        print!("{yaml}");
        return Ok(());
    }
    for path in CRD_PATHS {
        let path = args.root.join(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, &yaml).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
