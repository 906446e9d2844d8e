//! `coded-sidecar fetch`: downloads a model (card + weights) into a
//! directory, checked against the card's sha256: the storage initializer
//! that runs as an init container before a worker, KServe's shape, so that
//! the worker then loads a local directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use crate::model::card::{CARD_FILE, ModelCard, WEIGHTS_FILE};
use crate::model::fetch;
use crate::model::store::{self, sha256_hex};

/// `fetch --help`.
pub const LONG_ABOUT: &str = "\
Downloads a model (its card.json and its weights) from URI into DIR, as the \
init container of a model pod does before the worker starts (the worker is \
then given --model DIR).

The weights are checked against the card's sha256 before anything is \
written, and both files are written atomically (a temporary file renamed \
into place), weights first: DIR never holds a card with weights that do not \
match it. When DIR already holds this card and weights that match it, \
nothing is downloaded (a restarted pod re-runs its init containers).

In DIR the weights are model.safetensors and the card names them so, \
whatever the source called them. Exits non-zero, with the reason, when the \
URI is not a model, cannot be reached, or the weights do not match.";

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The model: a model directory or card.json as a path, file://,
    /// http(s)://, s3://, gs:// or az:// URI, as for `worker --model`
    /// (object storage credentials and endpoints from the usual AWS_*,
    /// GOOGLE_*, AZURE_* variables, as object_store reads them).
    #[arg(long, value_name = "URI")]
    pub uri: String,
    /// Directory to write card.json and model.safetensors into (created if
    /// missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// What a fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    /// Downloaded and written.
    Written {
        name: String,
        sha256: String,
        bytes: usize,
    },
    /// The directory already held this model.
    AlreadyPresent { name: String, sha256: String },
}

pub fn run(args: FetchArgs) -> anyhow::Result<()> {
    let runtime = crate::runtime::io_runtime(1).context("starting the async runtime")?;
    match runtime.block_on(fetch_into(&args.uri, &args.out))? {
        Fetched::Written {
            name,
            sha256,
            bytes,
        } => println!(
            "fetched {name} from {} into {} ({bytes} bytes of weights, sha256 {sha256})",
            args.uri,
            args.out.display()
        ),
        Fetched::AlreadyPresent { name, sha256 } => println!(
            "{} already holds {name} with matching weights (sha256 {sha256}); nothing to do",
            args.out.display()
        ),
    }
    Ok(())
}

/// Fetches the model `uri` names into `out`; see [`FetchArgs`].
pub async fn fetch_into(uri: &str, out: &Path) -> anyhow::Result<Fetched> {
    let card = fetch::card(uri)
        .await
        .with_context(|| format!("reading the model card of {uri}"))?;
    let mut local = card.clone();
    local.weights.uri = WEIGHTS_FILE.to_owned();
    if holds(out, &local) {
        return Ok(Fetched::AlreadyPresent {
            name: local.name,
            sha256: local.weights.sha256,
        });
    }
    let (weights, from) = fetch::weights(uri, &card)
        .await
        .with_context(|| format!("fetching the weights of {uri}"))?;
    tracing::info!(%from, bytes = weights.len(), "weights match the card");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(&local).context("writing the card")? + "\n";
    write_atomically(out, WEIGHTS_FILE, &weights)?;
    write_atomically(out, CARD_FILE, json.as_bytes())?;
    Ok(Fetched::Written {
        name: local.name,
        sha256: local.weights.sha256,
        bytes: weights.len(),
    })
}

/// Whether `dir` holds `card` and weights that match it.
fn holds(dir: &Path, card: &ModelCard) -> bool {
    let Ok((present, _)) = store::read_card(&dir.join(CARD_FILE)) else {
        return false;
    };
    if &present != card {
        return false;
    }
    match std::fs::read(dir.join(WEIGHTS_FILE)) {
        Ok(bytes) => sha256_hex(&bytes).eq_ignore_ascii_case(&card.weights.sha256),
        Err(_) => false,
    }
}

/// Writes `dir/name` through a temporary file in `dir`, synced, then
/// renamed: readers see the old file or the whole new one. The temporary
/// file is removed if anything fails.
fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<()> {
    let target = dir.join(name);
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    // Readable by a worker that runs as another user than this init
    // container (temporary files start private).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("making {} readable", tmp.path().display()))?;
    }
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(&target)
        .map_err(|e| e.error)
        .with_context(|| format!("moving the new {name} into place"))?;
    // The rename itself reaches the disk with the directory.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
