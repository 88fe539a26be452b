//! The compute backend chosen at build time: burn's pure-Rust `Flex` CPU backend by default,
//! CUDA with the `cuda` feature (libraries loaded at run time; `cuda-fused` adds burn's
//! kernel fusion and autotuning).

#[cfg(not(feature = "cuda"))]
pub type Compute = burn::backend::Flex;
#[cfg(feature = "cuda")]
pub type Compute = burn::backend::Cuda;

/// The backend with automatic differentiation, for training.
pub type Train = burn::backend::Autodiff<Compute>;

/// Human-readable name of the compiled backend, recorded in provenance.
pub const NAME: &str = if cfg!(feature = "cuda-fused") {
    "cuda-fused"
} else if cfg!(feature = "cuda") {
    "cuda"
} else {
    "cpu-flex"
};

/// The device for a GPU ordinal (ignored on the CPU).
#[cfg(not(feature = "cuda"))]
pub fn device(_ordinal: usize) -> burn::tensor::Device<Compute> {
    Default::default()
}

/// The device for a GPU ordinal.
#[cfg(feature = "cuda")]
pub fn device(ordinal: usize) -> burn::tensor::Device<Compute> {
    burn::backend::cuda::CudaDevice::new(ordinal)
}

/// The dtype the frozen language model computes in: `auto` is bf16 on a GPU and f32 on the
/// CPU. `None` means the backend's default float (f32), which keeps CPU runs bitwise as
/// they were. Trainable weights (projector, LoRA) stay f32 masters either way.
pub fn lm_dtype(d: crate::config::DType) -> Option<burn::tensor::DType> {
    use crate::config::DType as C;
    use burn::tensor::DType as T;
    match d {
        C::Auto if cfg!(feature = "cuda") => Some(T::BF16),
        C::Auto | C::F32 => None,
        C::Bf16 => Some(T::BF16),
        C::F16 => Some(T::F16),
    }
}

/// Device memory on a GPU: (bytes in use, bytes reserved by the allocator). `None` on the
/// CPU, where the process's peak RSS is the measure.
#[cfg(feature = "cuda")]
pub fn device_memory(device: &burn::tensor::Device<Compute>) -> Option<(u64, u64)> {
    use cubecl::Runtime;
    let u = cubecl::cuda::CudaRuntime::client(device)
        .memory_usage()
        .ok()?;
    Some((u.bytes_in_use, u.bytes_reserved))
}

#[cfg(not(feature = "cuda"))]
pub fn device_memory(_device: &burn::tensor::Device<Compute>) -> Option<(u64, u64)> {
    None
}

/// Refuses an experiment whose `backend` this build cannot honour (the backend is chosen
/// at compile time).
pub fn check_choice(choice: crate::config::BackendChoice) -> anyhow::Result<()> {
    use crate::config::BackendChoice as C;
    match choice {
        C::Cuda if !cfg!(feature = "cuda") => anyhow::bail!(
            "backend = \"cuda\" needs a harness built with `--features cuda` (this build is {NAME})"
        ),
        C::Cpu if cfg!(feature = "cuda") => anyhow::bail!(
            "backend = \"cpu\" but this harness was built with `--features cuda`; use the default build, or backend = \"auto\""
        ),
        _ => Ok(()),
    }
}

/// Refuses `devices` this build cannot give: the CPU backend has one device, 0 (list it
/// once per data-parallel worker: `[0, 0]` runs two workers on it).
pub fn check_devices(devices: &[usize]) -> anyhow::Result<()> {
    if !cfg!(feature = "cuda") {
        if let Some(d) = devices.iter().find(|&&d| d != 0) {
            anyhow::bail!(
                "devices = {devices:?}: this {NAME} build has one device, 0 (device {d} does not exist); \
                 list 0 once per worker, e.g. devices = [0, 0] for two workers sharing the CPU"
            );
        }
    }
    Ok(())
}

/// This process's host memory, from `/proc/self/status` (Linux), in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct HostMemory {
    /// Resident now (`VmRSS`): anonymous plus file-backed pages (mapped checkpoints).
    pub rss: u64,
    /// Peak resident (`VmHWM`).
    pub peak_rss: u64,
    /// Anonymous resident now (`RssAnon`): what the process allocated, mappings left out.
    pub anon: u64,
}

/// [`HostMemory`] now (zeros where the kernel does not say).
pub fn host_memory() -> HostMemory {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |k| k * 1024)
    };
    HostMemory {
        rss: kb("VmRSS:"),
        peak_rss: kb("VmHWM:"),
        anon: kb("RssAnon:"),
    }
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`; NaN where unknown).
pub fn peak_rss_bytes() -> f64 {
    match host_memory().peak_rss {
        0 => f64::NAN,
        b => b as f64,
    }
}

/// Samples the anonymous resident memory every few milliseconds on a thread of its own,
/// for the peak the kernel does not keep (`VmHWM` counts mapped checkpoint pages too).
pub struct PeakAnon {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PeakAnon {
    pub fn start() -> Self {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let peak = std::sync::Arc::new(AtomicU64::new(host_memory().anon));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(host_memory().anon, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        });
        PeakAnon {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    /// The highest anonymous RSS seen so far (bytes).
    pub fn peak(&self) -> u64 {
        use std::sync::atomic::Ordering;
        self.peak.load(Ordering::Relaxed).max(host_memory().anon)
    }
}

impl Drop for PeakAnon {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Tunes glibc's allocator for tensor churn: every op of the CPU backend allocates a fresh
/// output buffer, and glibc by default returns freed memory above 128 KiB (its threshold
/// adapts upwards only slowly) to the kernel, so the next op's buffer of the same size
/// faults its pages in again (page faults and zeroing were ~7% of a small training step in
/// `perf`). Buffers up to 32 MiB (glibc's most) now come from the heap, which keeps what it
/// frees for reuse; peak resident memory was unchanged in `harness bench`. Larger buffers
/// are still mapped and unmapped, so streaming a big checkpoint's weights is unaffected.
/// Call once at start-up, before threads allocate.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before other threads run.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
