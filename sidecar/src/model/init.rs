//! Seeded initialisation. candle's CPU device cannot be seeded, so after the
//! layers are built we overwrite their weights from our own seeded stream,
//! the way PyTorch initialises linear and conv layers (uniform in
//! ±1/sqrt(fan_in)); batch-norm parameters keep their constant init.

use candle_core::Tensor;
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub fn reseed(varmap: &VarMap, seed: u64) -> candle_core::Result<()> {
    let vars = varmap
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
    let mut names: Vec<&String> = vars.keys().collect();
    // HashMap order is random; sort so the stream is assigned deterministically.
    names.sort();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for name in names {
        let var = &vars[name];
        let fan_in = match name.rsplit_once('.') {
            Some((_, "weight")) if var.rank() >= 2 => fan_in(var.dims()),
            Some((layer, "bias")) => match vars.get(&format!("{layer}.weight")) {
                Some(w) if w.rank() >= 2 => fan_in(w.dims()),
                _ => continue,
            },
            _ => continue,
        };
        let bound = 1.0 / (fan_in as f32).sqrt();
        let values: Vec<f32> = (0..var.elem_count())
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        // Drawn on the host (the stream is ours), then placed like the variable.
        let value = Tensor::from_vec(values, var.shape(), var.device())?;
        var.set(&value.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

fn fan_in(dims: &[usize]) -> usize {
    dims[1..].iter().product::<usize>().max(1)
}
