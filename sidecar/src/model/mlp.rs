//! The papers' Fashion-MNIST MLP: 784 → 200 → ReLU → 100 → ReLU → 10.

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder, linear};

pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl Mlp {
    pub fn new(vb: VarBuilder, input_len: usize, classes: usize) -> Result<Self> {
        Ok(Self {
            fc1: linear(input_len, 200, vb.pp("fc1"))?,
            fc2: linear(200, 100, vb.pp("fc2"))?,
            fc3: linear(100, classes, vb.pp("fc3"))?,
        })
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Result<Tensor> {
        let xs = xs.flatten_from(1)?;
        let xs = self.fc1.forward(&xs)?.relu()?;
        let xs = self.fc2.forward(&xs)?.relu()?;
        self.fc3.forward(&xs)
    }
}
