//! Process-wide compute settings: thread count and denormal flushing.

/// Sets the compute thread count (candle's matmuls and our rayon pool) and
/// makes every compute thread flush subnormal floats to zero: tiny weights
/// and Adam moments otherwise slow CPU training several-fold.
///
/// Call once, first thing in `main`, before any other thread exists.
pub fn init_compute(threads: Option<usize>) {
    if let Some(n) = threads {
        // SAFETY: called at start-up while the process is single-threaded;
        // candle reads this variable to size its matmul parallelism.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", n.max(1).to_string()) };
    }
    flush_denormals();
    let mut pool = rayon::ThreadPoolBuilder::new().start_handler(|_| flush_denormals());
    if let Some(n) = threads {
        pool = pool.num_threads(n.max(1));
    }
    // Fails only if a global pool exists already, which then keeps its settings.
    let _ = pool.build_global();
}

/// Sets flush-to-zero and denormals-are-zero for the calling thread.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    #[allow(deprecated)] // the intrinsics are deprecated in favour of inline asm, same effect
    // SAFETY: only changes the rounding of subnormal results for this thread.
    unsafe {
        use std::arch::x86_64::{_mm_getcsr, _mm_setcsr};
        const FTZ_DAZ: u32 = 0x8040;
        _mm_setcsr(_mm_getcsr() | FTZ_DAZ);
    }
}

/// The async runtime of a server process on `threads` I/O threads: one is
/// a current-thread runtime (no hand-offs between threads at all), more a
/// multi-thread one.
pub fn io_runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = match threads {
        0 => anyhow::bail!("--io-threads must be at least 1"),
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    Ok(builder.enable_all().build()?)
}
