//! The models `local` serves: trained once, then loaded from a cache dir
//! keyed by everything that changes the weights.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::Device;

use crate::coding::{EncoderKind, LinearCode};
use crate::data::FashionMnist;
use crate::model::card::Role;
use crate::model::{Arch, Model, Placement};
use crate::train::{TrainOptions, parity::default_groups_per_batch, train_base, train_parity};

#[derive(Debug, Clone)]
pub struct ModelPlan {
    pub arch: Arch,
    pub k: usize,
    /// Parities per group: one parity model each (0: a base model only,
    /// for the Berrut code).
    pub r: usize,
    pub encoder: EncoderKind,
    pub base_epochs: usize,
    pub parity_epochs: usize,
    pub seed: u64,
    pub cache: PathBuf,
    /// Where missing models are trained (and cached ones verified).
    pub device: Device,
}

/// Where the base and parity model directories live: one parity model
/// per parity index.
pub struct ModelDirs {
    pub base: PathBuf,
    pub parity: Vec<PathBuf>,
}

/// `$XDG_CACHE_HOME/coded-serving/models`, or under `~/.cache`.
pub fn default_cache_dir() -> PathBuf {
    let root = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    root.join("coded-serving").join("models")
}

impl ModelPlan {
    pub fn dirs(&self) -> ModelDirs {
        let base = format!("{}-e{}-s{}", self.arch, self.base_epochs, self.seed);
        // r = 1 keeps the directory it always had.
        let parity = |l: usize| match self.r {
            1 => format!(
                "{base}-parity-k{}-{}-e{}",
                self.k, self.encoder, self.parity_epochs
            ),
            r => format!(
                "{base}-parity-k{}-{}-r{r}-{l}-e{}",
                self.k, self.encoder, self.parity_epochs
            ),
        };
        ModelDirs {
            parity: (0..self.r).map(|l| self.cache.join(parity(l))).collect(),
            base: self.cache.join(base),
        }
    }

    /// Loads the base and parity models from the cache, training whichever
    /// is missing or does not verify (progress bars while training). `load` reads the
    /// dataset, only if something needs training.
    pub fn ensure(
        &self,
        load: &dyn Fn() -> anyhow::Result<FashionMnist>,
    ) -> anyhow::Result<ModelDirs> {
        let dirs = self.dirs();
        let opts = |epochs| TrainOptions {
            epochs,
            seed: self.seed,
            limit: None,
            quiet: false,
        };
        let mut data = None;
        let placement = Placement::f32(self.device.clone());
        let base = match cached(&dirs.base, &placement) {
            Some(model) => model,
            None => {
                eprintln!(
                    "training the base model ({}, {} epochs) into {}",
                    self.arch,
                    self.base_epochs,
                    dirs.base.display()
                );
                let d = dataset(&mut data, load, &self.device)?;
                train_base(
                    d,
                    self.arch,
                    crate::train::base::BASE_BATCH,
                    &opts(self.base_epochs),
                    &dirs.base,
                )
                .context("training the base model")?;
                crate::model::load(&dirs.base, &placement)
                    .context("loading the trained base model")?
            }
        };
        if dirs.parity.is_empty() {
            return Ok(dirs);
        }
        let code = LinearCode::new(self.k, self.r)?;
        for (l, dir) in dirs.parity.iter().enumerate() {
            if let Some(parity) = cached(dir, &placement)
                && matches!(&parity.card.role, Role::Parity { base_sha256, .. } if *base_sha256 == base.card.weights.sha256)
                && parity.card.check_parity(&code, self.encoder, l).is_ok()
            {
                continue;
            }
            eprintln!(
                "training parity model {l} (k = {}, r = {}, {}, {} epochs) into {}",
                self.k,
                self.r,
                self.encoder,
                self.parity_epochs,
                dir.display()
            );
            train_parity(
                dataset(&mut data, load, &self.device)?,
                &base,
                &code,
                l,
                self.encoder,
                default_groups_per_batch(self.k),
                &opts(self.parity_epochs),
                dir,
            )
            .with_context(|| format!("training parity model {l}"))?;
        }
        Ok(dirs)
    }
}

fn dataset<'a>(
    slot: &'a mut Option<FashionMnist>,
    load: &dyn Fn() -> anyhow::Result<FashionMnist>,
    device: &Device,
) -> anyhow::Result<&'a FashionMnist> {
    if slot.is_none() {
        *slot = Some(load()?.to_device(device)?);
    }
    slot.as_ref().context("the dataset is not loaded")
}

fn cached(dir: &Path, placement: &Placement) -> Option<Model> {
    if !dir.join(crate::model::card::CARD_FILE).exists() {
        return None;
    }
    match crate::model::load(dir, placement) {
        Ok(model) => {
            eprintln!("using the cached model {}", dir.display());
            Some(model)
        }
        Err(e) => {
            eprintln!(
                "the cached model {} does not load ({e:#}); training it again",
                dir.display()
            );
            None
        }
    }
}
