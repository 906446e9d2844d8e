//! ResNet-18 adapted to 28×28 inputs, as in ParM's image experiments: a 3×3
//! stride-1 stem (no max-pool, the images are tiny), three stages of two
//! basic blocks with 64/128/256 channels (strides 1, 2, 2), global average
//! pooling and a linear classifier.

use candle_core::{ModuleT, Result, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear, Module, VarBuilder, batch_norm, linear};

const STAGES: [(usize, usize); 3] = [(64, 1), (128, 2), (256, 2)];
const BLOCKS_PER_STAGE: usize = 2;

fn conv3x3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride,
        ..Default::default()
    };
    candle_nn::conv2d_no_bias(cin, cout, 3, cfg, vb)
}

struct BasicBlock {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    /// 1×1 projection when the shape changes.
    shortcut: Option<(Conv2d, BatchNorm)>,
}

impl BasicBlock {
    fn new(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let shortcut = if stride != 1 || cin != cout {
            let cfg = Conv2dConfig {
                stride,
                ..Default::default()
            };
            Some((
                candle_nn::conv2d_no_bias(cin, cout, 1, cfg, vb.pp("shortcut.conv"))?,
                batch_norm(cout, 1e-5, vb.pp("shortcut.bn"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: conv3x3(cin, cout, stride, vb.pp("conv1"))?,
            bn1: batch_norm(cout, 1e-5, vb.pp("bn1"))?,
            conv2: conv3x3(cout, cout, 1, vb.pp("conv2"))?,
            bn2: batch_norm(cout, 1e-5, vb.pp("bn2"))?,
            shortcut,
        })
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let ys = self.conv1.forward(xs)?.apply_t(&self.bn1, train)?.relu()?;
        let ys = self.conv2.forward(&ys)?.apply_t(&self.bn2, train)?;
        let skip = match &self.shortcut {
            Some((conv, bn)) => conv.forward(xs)?.apply_t(bn, train)?,
            None => xs.clone(),
        };
        (ys + skip)?.relu()
    }
}

pub struct ResNet18 {
    stem: Conv2d,
    stem_bn: BatchNorm,
    blocks: Vec<BasicBlock>,
    fc: Linear,
}

impl ResNet18 {
    pub fn new(vb: VarBuilder, channels: usize, classes: usize) -> Result<Self> {
        let mut blocks = Vec::new();
        let mut cin = 64;
        for (s, &(cout, stride)) in STAGES.iter().enumerate() {
            for b in 0..BLOCKS_PER_STAGE {
                let stride = if b == 0 { stride } else { 1 };
                blocks.push(BasicBlock::new(
                    cin,
                    cout,
                    stride,
                    vb.pp(format!("layer{}.{b}", s + 1)),
                )?);
                cin = cout;
            }
        }
        Ok(Self {
            stem: conv3x3(channels, 64, 1, vb.pp("stem.conv"))?,
            stem_bn: batch_norm(64, 1e-5, vb.pp("stem.bn"))?,
            blocks,
            fc: linear(cin, classes, vb.pp("fc"))?,
        })
    }
}

impl ModuleT for ResNet18 {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mut xs = self
            .stem
            .forward(xs)?
            .apply_t(&self.stem_bn, train)?
            .relu()?;
        for block in &self.blocks {
            xs = block.forward_t(&xs, train)?;
        }
        let pooled = xs.mean(3)?.mean(2)?;
        self.fc.forward(&pooled)
    }
}
