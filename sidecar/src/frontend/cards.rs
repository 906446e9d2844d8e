//! The cards the frontend checks at start: each `--parity-card` against
//! the code the flags give, and a learned code's `--code-card` card, loaded.

use std::sync::Arc;

use anyhow::{Context, bail};

use super::options::FrontendOptions;
use crate::coding::{LearnedCode, LinearCode};

/// Reads each `--parity-card` and checks that it is that parity of the
/// code the flags give.
pub(super) async fn check_parity_cards(options: &FrontendOptions) -> anyhow::Result<()> {
    if options.parity_card.is_empty() {
        return Ok(());
    }
    let code = LinearCode::new(options.k, options.r)?;
    if options.parity_card.len() != options.r {
        bail!(
            "--parity-card names {} cards but --r {} needs one per parity, parity 0 first",
            options.parity_card.len(),
            options.r
        );
    }
    for (l, uri) in options.parity_card.iter().enumerate() {
        let card = crate::model::fetch::card(uri)
            .await
            .with_context(|| format!("reading the parity card {uri}"))?;
        card.check_parity(&code, options.encoder, l).map_err(|e| {
            anyhow::anyhow!(
                "--parity-card {uri}: {e} (flags: --k {} --r {} --encoder {})",
                options.k,
                options.r,
                options.encoder
            )
        })?;
    }
    Ok(())
}

/// Loads `--code-card` for a learned encoder and decoder, refusing a card whose
/// code is not the one the flags give, and flags that need a code without
/// one (or a code with hand-written flags).
pub(super) async fn load_learned(
    options: &FrontendOptions,
) -> anyhow::Result<Option<Arc<LearnedCode>>> {
    let flags = format!(
        "flags: --k {} --r {} --encoder {} --decoder {}",
        options.k, options.r, options.encoder, options.decoder
    );
    let learned =
        options.encoder.is_learned() || options.decoder != crate::coding::Decoder::Subtract;
    if options.code == crate::coding::CodeKind::Berrut && (learned || options.code_card.is_some()) {
        bail!(
            "--code berrut is training-free: it takes no learned code (--code-card, --encoder mlp|conv, --decoder mlp)"
        );
    }
    let Some(uri) = &options.code_card else {
        if learned {
            bail!(
                "a learned code needs its weights: give --code-card with the card from `train code` ({flags})"
            );
        }
        return Ok(None);
    };
    if !options.parity_card.is_empty() {
        bail!(
            "--code-card and --parity-card exclude each other: a learned code has no parity model"
        );
    }
    let card = crate::model::fetch::card(uri)
        .await
        .with_context(|| format!("reading the learned code's card {uri}"))?;
    card.check_code(options.k, options.r, options.encoder, options.decoder)
        .map_err(|e| anyhow::anyhow!("--code-card {uri}: {e} ({flags})"))?;
    let (bytes, origin) = crate::model::fetch::weights(uri, &card)
        .await
        .with_context(|| format!("fetching the learned code's weights {uri}"))?;
    // CPU by design: the code's networks are small, and the frontend codes
    // the flat f32 rows of requests on its own threads.
    let code = crate::model::code::code_from_bytes(
        card,
        &bytes,
        std::path::Path::new(&origin),
        &candle_core::Device::Cpu,
    )
    .with_context(|| format!("loading the learned code {uri}"))?;
    Ok(Some(Arc::new(code.code)))
}
