//! `coded-sidecar eval`: degraded-mode accuracy of a base model and the
//! parity models of one code, or of the training-free Berrut code.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::DataArgs;
use crate::coding::CodeKind;
use crate::device::{DeviceArgs, Placement};
use crate::eval::report::evaluate;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The base model's card (card.json or its directory).
    #[arg(long)]
    pub base: PathBuf,
    /// The parity model's card; with r ≥ 2 parities, each of the code's r
    /// cards (repeat the flag or comma-separate), scored under every
    /// pattern of up to r losses. Needed by `--code parity` (unless --code-card).
    #[arg(long, value_delimiter = ',')]
    pub parity: Vec<PathBuf>,
    /// `parity` scores the --parity models; `berrut` needs none and scores
    /// the Berrut code (every answer decoded from the base model's answers
    /// to coded queries) for each --berrut-k, n = k + each --berrut-extra,
    /// under every pattern of 0..=--berrut-losses lost coded answers.
    #[arg(long, value_enum, default_value_t = CodeKind::Parity)]
    pub code: CodeKind,
    #[arg(long, value_delimiter = ',', default_value = "2,3,4")]
    pub berrut_k: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub berrut_extra: Vec<usize>,
    #[arg(long, default_value_t = 2)]
    pub berrut_losses: usize,
    /// A learned code's card (`train code`) to score instead of parity
    /// models: its parities are served by the base model, its decoder
    /// rebuilds the lost outputs; every pattern of up to r losses.
    #[arg(long, conflicts_with = "parity")]
    pub code_card: Option<PathBuf>,
    /// Seed of the random grouping of test images into coding groups.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Score only the first N test images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub data: DataArgs,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let placement = Placement::f32(args.device.open()?);
    let base = crate::model::load(&args.base, &placement)
        .with_context(|| format!("loading the base model {}", args.base.display()))?;
    if args.code == CodeKind::Berrut {
        if args.code_card.is_some() {
            anyhow::bail!(
                "--code-card is a learned code's card; --code berrut needs no card: drop one of them"
            );
        }
        return run_berrut(&args, &base, &placement);
    }
    if let Some(path) = &args.code_card {
        let code = crate::model::load_code(path, &placement.device)
            .with_context(|| format!("loading the learned code {}", path.display()))?;
        let data = args.data.load()?.to_device(&placement.device)?;
        let test = match args.limit {
            Some(n) => data.test.take(n)?,
            None => data.test,
        };
        let report = crate::eval::learned::evaluate_code(&base, &code, &test, args.seed)?;
        return write(&report, args.json.as_deref());
    }
    if args.parity.is_empty() {
        anyhow::bail!(
            "--code parity scores parity models: pass their cards with --parity (or a learned code's with --code-card)"
        );
    }
    let parities = args
        .parity
        .iter()
        .map(|p| {
            crate::model::load(p, &placement)
                .with_context(|| format!("loading the parity model {}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let data = args.data.load()?.to_device(&placement.device)?;
    let test = match args.limit {
        Some(n) => data.test.take(n)?,
        None => data.test,
    };
    let parities: Vec<&crate::model::Model> = parities.iter().collect();
    let report = evaluate(&base, &parities, &test, args.seed)?;
    write(&report, args.json.as_deref())
}

fn write(
    report: &crate::eval::report::EvalReport,
    json: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    print!("{}", report.table());
    if let Some(path) = json {
        let json = serde_json::to_string_pretty(report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

fn run_berrut(
    args: &EvalArgs,
    base: &crate::model::Model,
    placement: &Placement,
) -> anyhow::Result<()> {
    if base.card.is_parity() {
        anyhow::bail!(
            "--base {} is a parity model; pass the base model's card",
            base.card.name
        );
    }
    let data = args.data.load()?.to_device(&placement.device)?;
    let test = match args.limit {
        Some(n) => data.test.take(n)?,
        None => data.test,
    };
    let report = crate::eval::berrut::evaluate_berrut(
        base,
        &test,
        args.seed,
        &args.berrut_k,
        &args.berrut_extra,
        args.berrut_losses,
    )?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}
