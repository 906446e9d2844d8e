//! A linear fake model, y = W x (+ a bias, 0 by default) with a fixed W,
//! for testing the server without candle. Shared by the integration tests and the
//! `linear_worker` example (which the Python client tests run against).

use std::sync::Mutex;

use coded_sidecar::protocol::{ModelInfo, TensorSpec};
use coded_sidecar::worker::{Backend, BackendError};

pub const INPUTS: usize = 4;
pub const OUTPUTS: usize = 3;

/// W[o][i] = o + 1 - i / 4: distinct rows, so a mixed-up row shows.
pub fn weight(o: usize, i: usize) -> f32 {
    (o + 1) as f32 - i as f32 / 4.0
}

/// The expected output for one input row.
pub fn expected(row: &[f32]) -> Vec<f32> {
    expected_with_bias(row, 0.0)
}

/// The expected output of a model with `bias` added to every output.
pub fn expected_with_bias(row: &[f32], bias: f32) -> Vec<f32> {
    (0..OUTPUTS)
        .map(|o| {
            row.iter()
                .enumerate()
                .map(|(i, x)| weight(o, i) * x)
                .sum::<f32>()
                + bias
        })
        .collect()
}

#[derive(Default)]
pub struct Linear {
    /// Rows of every model call, to check batching.
    pub batches: Mutex<Vec<usize>>,
    /// Time each call takes, to let concurrent requests pile up.
    pub call_time: std::time::Duration,
    /// Added to every output: F(0) = bias, so that a frontend that took
    /// F(0) for 0 in a padded group, or mixed up a model and its parity
    /// model (given k times the bias), gives wrong answers.
    pub bias: f32,
    /// The name it is served under [default: `linear`] (parity l ≥ 1 of a
    /// code is called as `<parity model>-<l>`).
    pub name: Option<String>,
}

impl Backend for Linear {
    fn metadata(&self) -> ModelInfo {
        ModelInfo {
            name: self.name.clone().unwrap_or_else(|| "linear".into()),
            versions: vec!["1".into()],
            platform: "test-linear".into(),
            input: TensorSpec::fp32("input", vec![INPUTS]),
            output: TensorSpec::fp32("logits", vec![OUTPUTS]),
        }
    }

    fn infer_batch(&self, shape: &[usize], data: &[f32]) -> Result<Vec<f32>, BackendError> {
        if shape.len() != 2 || shape[1] != INPUTS || data.len() != shape[0] * INPUTS {
            return Err(BackendError::msg(format!("bad batch shape {shape:?}")));
        }
        if let Ok(mut b) = self.batches.lock() {
            b.push(shape[0]);
        }
        if !self.call_time.is_zero() {
            std::thread::sleep(self.call_time);
        }
        Ok(data
            .chunks(INPUTS)
            .flat_map(|row| expected_with_bias(row, self.bias))
            .collect())
    }
}
