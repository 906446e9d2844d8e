//! `coded-sidecar plot accuracy`: the figure of docs/accuracy.md from eval reports.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::eval::plot::plot_accuracy;
use crate::eval::report::{EvalReport, markdown_table};

#[derive(Debug, Subcommand)]
pub enum PlotCommand {
    /// Accuracy against k from `eval --json` reports.
    Accuracy(AccuracyArgs),
}

#[derive(Debug, Args)]
pub struct AccuracyArgs {
    /// JSON reports written by `coded-sidecar eval --json`.
    #[arg(required = true)]
    pub reports: Vec<PathBuf>,
    /// PNG to write.
    #[arg(long, default_value = "docs/accuracy.png")]
    pub out: PathBuf,
    /// Also write the results as a Markdown table to this file.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
}

pub fn run(cmd: PlotCommand) -> anyhow::Result<()> {
    let PlotCommand::Accuracy(args) = cmd;
    let mut reports = Vec::new();
    for path in &args.reports {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let r: EvalReport = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an eval report", path.display()))?;
        reports.push(r);
    }
    plot_accuracy(&reports, &args.out)?;
    println!("wrote {}", args.out.display());
    if let Some(md) = &args.markdown {
        std::fs::write(md, markdown_table(&reports))
            .with_context(|| format!("writing {}", md.display()))?;
        println!("wrote {}", md.display());
    }
    Ok(())
}
