//! The candle models as a worker's backend: metadata from the model card,
//! batches through the network's forward pass.

use candle_core::Tensor;

use super::{Backend, BackendError};
use crate::model::Model;
use crate::protocol::{ModelInfo, TensorSpec};

/// Serves one model (base or parity) under `name`.
pub struct CandleBackend {
    name: String,
    model: Model,
}

impl CandleBackend {
    pub fn new(name: impl Into<String>, model: Model) -> Self {
        Self {
            name: name.into(),
            model,
        }
    }
}

impl Backend for CandleBackend {
    fn metadata(&self) -> ModelInfo {
        let card = &self.model.card;
        ModelInfo {
            name: self.name.clone(),
            versions: vec!["1".into()],
            platform: format!("candle-{}", card.arch),
            input: TensorSpec::fp32(card.input.name.clone(), card.input.shape.clone()),
            output: TensorSpec::fp32(card.output.name.clone(), card.output.shape.clone()),
        }
    }

    fn infer_batch(&self, shape: &[usize], data: &[f32]) -> Result<Vec<f32>, BackendError> {
        let device = self.model.network.device();
        let xs = Tensor::from_slice(data, shape, device).map_err(BackendError::new)?;
        self.model
            .network
            .forward(&xs)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .map_err(BackendError::new)
    }
}
