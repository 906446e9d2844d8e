//! Where tensors live: the one place that picks a candle [`Device`].
//!
//! `--device cpu|cuda[:N]` (env `CODED_DEVICE`) is parsed at the edge
//! ([`DeviceArgs`]), opened once ([`DeviceSpec::open`]) and the `Device`
//! passed down to every `VarBuilder` and tensor; nothing below names one,
//! except code that is CPU by design (reading files into tensors before
//! they are moved, the frontend's coding of flat `f32` vectors), which says
//! so where it does.

use std::fmt;
use std::str::FromStr;

use candle_core::{DType, Device};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("'{0}' is not a device: use cpu, cuda or cuda:N")]
    Parse(String),
    #[error(
        "--device {0} needs CUDA, but this coded-sidecar was built without it (cargo feature `cuda`); use --device cpu or a CUDA build"
    )]
    NotBuilt(DeviceSpec),
    #[error("--device {spec} cannot be opened (no usable NVIDIA GPU or driver?): {reason}")]
    Unavailable { spec: DeviceSpec, reason: String },
}

/// A device as named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || DeviceError::Parse(s.to_owned());
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(Self::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl DeviceSpec {
    pub fn is_cuda(self) -> bool {
        matches!(self, Self::Cuda(_))
    }

    /// Opens the device: fails with a one-line reason when this binary has
    /// no CUDA support or no GPU (driver) answers.
    pub fn open(self) -> Result<Device, DeviceError> {
        match self {
            Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(ordinal) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(DeviceError::NotBuilt(self));
                }
                open_cuda(ordinal).map_err(|reason| DeviceError::Unavailable { spec: self, reason })
            }
        }
    }
}

/// cudarc panics instead of failing when the driver library cannot be
/// loaded; turn that into an error with the panic's message, without the
/// panic hook's backtrace noise.
fn open_cuda(ordinal: usize) -> Result<Device, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let opened = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    std::panic::set_hook(hook);
    match opened {
        Ok(Ok(device)) => Ok(device),
        Ok(Err(e)) => Err(one_line(&e.to_string())),
        Err(panic) => Err(panic
            .downcast_ref::<String>()
            .map(|s| one_line(s))
            .or_else(|| panic.downcast_ref::<&str>().map(|s| one_line(s)))
            .unwrap_or_else(|| "the CUDA driver could not be loaded".into())),
    }
}

/// The first line of an error (candle appends a backtrace on the lines
/// after it when RUST_BACKTRACE is set), its spaces squeezed.
fn one_line(s: &str) -> String {
    let first = s.lines().find(|l| !l.trim().is_empty()).unwrap_or_default();
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A device as `--device` names it.
pub fn name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Floating-point precision of inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Precision {
    /// 32-bit floats (the default; what the models are trained in).
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16 (CUDA needs compute capability 8.0 or later).
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::Bf16 => DType::BF16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

/// The device flag of `train`, `eval`, `worker` and `local`.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// Where the model runs: cpu, cuda (GPU 0) or cuda:N. CUDA needs a
    /// coded-sidecar built with the cargo feature `cuda` and an NVIDIA GPU
    /// with its driver; asking for it otherwise fails at start.
    #[arg(long, env = "CODED_DEVICE", default_value = "cpu")]
    pub device: DeviceSpec,
}

impl DeviceArgs {
    pub fn open(&self) -> Result<Device, DeviceError> {
        self.device.open()
    }
}

/// The device and precision a served model runs in.
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: Device,
    pub dtype: DType,
}

impl Placement {
    /// f32 on `device`.
    pub fn f32(device: Device) -> Self {
        Self {
            device,
            dtype: DType::F32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_and_print() {
        assert_eq!("cpu".parse(), Ok(DeviceSpec::Cpu));
        assert_eq!("CUDA".parse(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceSpec::Cuda(3)));
        assert_eq!(DeviceSpec::Cuda(3).to_string(), "cuda:3");
        for bad in ["", "tpu", "cuda:", "cuda:x", "cuda:-1", "metal"] {
            let err = bad.parse::<DeviceSpec>().unwrap_err().to_string();
            assert!(err.contains("use cpu, cuda or cuda:N"), "{bad}: {err}");
        }
    }

    #[test]
    fn errors_keep_their_first_line_only() {
        assert_eq!(
            one_line("DriverError(X, \"no  driver\")\n 0: candle::bt\n 1: main"),
            "DriverError(X, \"no driver\")"
        );
    }

    #[test]
    fn cpu_opens() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
    }

    /// The default build has no CUDA: asking for it is a clear error, not a
    /// panic or a silent CPU fallback.
    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_refused_clearly() {
        let err = DeviceSpec::Cuda(0).open().unwrap_err();
        assert_eq!(err, DeviceError::NotBuilt(DeviceSpec::Cuda(0)));
        let msg = err.to_string();
        assert!(
            msg.contains("built without it (cargo feature `cuda`)"),
            "{msg}"
        );
        assert!(!msg.contains('\n'));
    }
}
