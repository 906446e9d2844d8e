//! The networks we serve and train, their cards and their weights on disk.
//!
//! Every network takes `[batch, channels, height, width]` f32 images and
//! returns `[batch, classes]` raw logits, so that base and parity models of
//! any architecture are interchangeable to the coding layer.

pub mod card;
pub mod cnn;
pub mod code;
pub mod fetch;
pub mod init;
pub mod mlp;
pub mod resnet;
pub mod store;

use candle_core::{DType, Device, ModuleT, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

pub use crate::device::Placement;
pub use card::{ModelCard, Role, TensorSpec};
pub use code::{CodeModel, load_code};
pub use store::{ModelError, load, save};

/// A network architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// The papers' MLP, 784→200→100→10.
    Mlp,
    /// Two conv layers, two pools, one hidden linear layer.
    Cnn,
    /// ResNet-18 adapted to 28×28 (stages 64/128/256).
    Resnet18,
}

impl Arch {
    pub fn name(self) -> &'static str {
        match self {
            Arch::Mlp => "mlp",
            Arch::Cnn => "cnn",
            Arch::Resnet18 => "resnet18",
        }
    }

    fn build(
        self,
        vb: VarBuilder,
        input: [usize; 3],
        classes: usize,
    ) -> candle_core::Result<Box<dyn ModuleT + Send + Sync>> {
        Ok(match self {
            Arch::Mlp => Box::new(mlp::Mlp::new(vb, input.iter().product(), classes)?),
            Arch::Cnn => Box::new(cnn::Cnn::new(vb, input, classes)?),
            Arch::Resnet18 => Box::new(resnet::ResNet18::new(vb, input[0], classes)?),
        })
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A network with its variables (trainable, and saved as safetensors).
pub struct Network {
    arch: Arch,
    input: [usize; 3],
    device: Device,
    dtype: DType,
    net: Box<dyn ModuleT + Send + Sync>,
    varmap: VarMap,
}

impl Network {
    /// A freshly initialised f32 network on `device` (what training
    /// needs); the same seed gives the same weights on every device.
    pub fn new(
        arch: Arch,
        input: [usize; 3],
        classes: usize,
        seed: u64,
        device: &Device,
    ) -> candle_core::Result<Self> {
        Self::placed(arch, input, classes, seed, &Placement::f32(device.clone()))
    }

    /// The same with its variables in `placement`'s device and precision
    /// (inference in f16 or bf16: inputs are cast to it, logits back to f32).
    pub fn placed(
        arch: Arch,
        input: [usize; 3],
        classes: usize,
        seed: u64,
        placement: &Placement,
    ) -> candle_core::Result<Self> {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, placement.dtype, &placement.device);
        let net = arch.build(vb, input, classes)?;
        init::reseed(&varmap, seed)?;
        Ok(Self {
            arch,
            input,
            device: placement.device.clone(),
            dtype: placement.dtype,
            net,
            varmap,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    pub fn input(&self) -> [usize; 3] {
        self.input
    }

    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// Logits in inference mode, detached from the variables: a result used
    /// later as a training target must not drag the whole forward pass into
    /// every backward step (that made parity training 14x slower).
    pub fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if self.dtype == DType::F32 {
            return Ok(self.net.forward_t(xs, false)?.detach());
        }
        let ys = self.net.forward_t(&xs.to_dtype(self.dtype)?, false)?;
        Ok(ys.to_dtype(DType::F32)?.detach())
    }

    /// Logits in inference mode, still in the graph: a learned code's
    /// gradients flow through the frozen base model to its encoder.
    pub fn forward_frozen(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.net.forward_t(xs, false)
    }

    /// Logits in training mode (batch statistics for batch norm).
    pub fn forward_train(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        self.net.forward_t(xs, true)
    }

    /// Logits for many images, `batch` at a time, to bound memory.
    pub fn forward_batched(&self, xs: &Tensor, batch: usize) -> candle_core::Result<Tensor> {
        let n = xs.dim(0)?;
        let mut outs = Vec::with_capacity(n.div_ceil(batch.max(1)));
        let mut start = 0;
        while start < n {
            let len = batch.max(1).min(n - start);
            outs.push(self.forward(&xs.narrow(0, start, len)?)?);
            start += len;
        }
        Tensor::cat(&outs, 0)
    }

    /// Number of scalar parameters.
    pub fn parameter_count(&self) -> usize {
        self.varmap.all_vars().iter().map(|v| v.elem_count()).sum()
    }
}

/// A network together with the card that describes it.
pub struct Model {
    pub card: ModelCard,
    pub network: Network,
}

/// Index of the largest value in each row of `[n, classes]` logits.
pub fn argmax(logits: &Tensor) -> candle_core::Result<Vec<u32>> {
    logits.argmax(1)?.to_vec1::<u32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out_shape(arch: Arch, batch: usize) -> Vec<usize> {
        let net = Network::new(arch, [1, 28, 28], 10, 0, &Device::Cpu).unwrap();
        let xs = Tensor::zeros((batch, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
        net.forward(&xs).unwrap().dims().to_vec()
    }

    #[test]
    fn every_arch_maps_images_to_logits() {
        assert_eq!(out_shape(Arch::Mlp, 3), [3, 10]);
        assert_eq!(out_shape(Arch::Cnn, 2), [2, 10]);
        assert_eq!(out_shape(Arch::Resnet18, 1), [1, 10]);
    }

    #[test]
    fn mlp_has_the_papers_size() {
        let net = Network::new(Arch::Mlp, [1, 28, 28], 10, 0, &Device::Cpu).unwrap();
        assert_eq!(
            net.parameter_count(),
            784 * 200 + 200 + 200 * 100 + 100 + 100 * 10 + 10
        );
    }

    #[test]
    fn same_seed_same_weights_other_seed_other_weights() {
        let xs = Tensor::ones((1, 1, 28, 28), DType::F32, &Device::Cpu).unwrap();
        let out = |seed| {
            Network::new(Arch::Mlp, [1, 28, 28], 10, seed, &Device::Cpu)
                .unwrap()
                .forward(&xs)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(out(7), out(7));
        assert_ne!(out(7), out(8));
    }

    #[test]
    fn batched_forward_matches_whole() {
        let net = Network::new(Arch::Mlp, [1, 28, 28], 10, 1, &Device::Cpu).unwrap();
        let xs = Tensor::rand(0f32, 1., (7, 1, 28, 28), &Device::Cpu).unwrap();
        let a = net.forward(&xs).unwrap();
        let b = net.forward_batched(&xs, 3).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
