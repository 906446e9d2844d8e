//! A small CNN: two 3×3 conv + ReLU + 2×2 max-pool stages (32, 64 channels),
//! then 128 hidden units and the classifier.

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, Module, VarBuilder, conv2d, linear};

pub struct Cnn {
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
}

impl Cnn {
    /// `input` is `[channels, height, width]`; height and width must be
    /// divisible by 4 (two 2×2 pools).
    pub fn new(vb: VarBuilder, input: [usize; 3], classes: usize) -> Result<Self> {
        let same = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let [c, h, w] = input;
        Ok(Self {
            conv1: conv2d(c, 32, 3, same, vb.pp("conv1"))?,
            conv2: conv2d(32, 64, 3, same, vb.pp("conv2"))?,
            fc1: linear(64 * (h / 4) * (w / 4), 128, vb.pp("fc1"))?,
            fc2: linear(128, classes, vb.pp("fc2"))?,
        })
    }
}

impl ModuleT for Cnn {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        let xs = self.conv1.forward(xs)?.relu()?.max_pool2d(2)?;
        let xs = self.conv2.forward(&xs)?.relu()?.max_pool2d(2)?;
        let xs = self.fc1.forward(&xs.flatten_from(1)?)?.relu()?;
        self.fc2.forward(&xs)
    }
}
