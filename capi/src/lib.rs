//! The C API of Glimpse: opaque handles over a model and a session that live in memory
//! the caller owns, after llama.h (`include/glimpse.h` is generated from this file by
//! cbindgen; `capi/README.md` shows the lifecycle in C).
//!
//! Nothing here allocates: a model handle is written into `glimpse_model_size()` bytes
//! the caller gives, a session handle into `glimpse_session_size()` bytes, and the
//! session's buffers are its planned arena, also the caller's. The same code builds for a host (`std`: a thread pool, a
//! clock, a thread-local error string) and for `thumbv8m.main-none-eabihf` and
//! `aarch64-unknown-none` (`--no-default-features --features panic-handler`).
//!
//! Every entry point checks what it can: null pointers, lengths, alignment, sizes against
//! the plan, handles by a magic number, a session against the model it was made from
//! (closing the model ends its sessions), calls into a session from its own callback.
//! What it cannot check is listed in the header: memory freed or reused behind a live
//! handle, pointers to too few bytes, two threads on one session.

#![cfg_attr(not(feature = "std"), no_std)]
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![allow(non_camel_case_types)]

use core::ffi::{c_char, c_void};
use core::mem::{align_of, size_of};
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use glimpse_core::arena::ALIGN;
use glimpse_core::planner::ArenaPlan;
use glimpse_core::preprocess::Frame;
use glimpse_core::session::{ImageInput, Prompt, Report, Session, SessionOptions};
use glimpse_core::stream::FrameStream;
use glimpse_core::{Error, Model};
use glimpse_hal::{ErrorKind, ErrorType, Executor, MonotonicClock, PixelFormat, TokenSink};

mod last_error;

pub use last_error::glimpse_last_error;
use last_error::set_last_error;

/// Success.
pub const GLIMPSE_OK: i32 = 0;
/// The token callback asked to stop; the tokens it saw stay in the conversation.
pub const GLIMPSE_STOPPED: i32 = 1;
/// A pointer that must not be null was null.
pub const GLIMPSE_ERR_NULL: i32 = -1;
/// A length does not match what the pointer's other arguments imply.
pub const GLIMPSE_ERR_LENGTH: i32 = -2;
/// A buffer does not start on the alignment the call needs (`GLIMPSE_ALIGN`, or 16 for
/// model bytes).
pub const GLIMPSE_ERR_ALIGNMENT: i32 = -3;
/// The arena or handle storage is too small (`glimpse_last_error` says how much would do).
pub const GLIMPSE_ERR_ARENA: i32 = -4;
/// The model bytes are not a valid Glimpse model (bad header, checksum, padding,
/// missing or misshapen tensor).
pub const GLIMPSE_ERR_MODEL: i32 = -5;
/// The parameters ask for something this model or build cannot do.
pub const GLIMPSE_ERR_PARAMS: i32 = -6;
/// The frame is empty, its bytes do not match its size and format, or it is larger than
/// the session was planned for.
pub const GLIMPSE_ERR_FRAME: i32 = -7;
/// The prompt is not UTF-8, too long for the plan, or the tokenizer refused it.
pub const GLIMPSE_ERR_PROMPT: i32 = -8;
/// The turn would not fit in the context; the conversation is left as it was.
pub const GLIMPSE_ERR_CONTEXT: i32 = -9;
/// The session's model was closed.
pub const GLIMPSE_ERR_CLOSED: i32 = -10;
/// Not a live handle of this kind (never opened, closed, or corrupted), or a session
/// called from inside its own token callback.
pub const GLIMPSE_ERR_HANDLE: i32 = -11;
/// A failure inside the runtime that the arguments do not explain.
pub const GLIMPSE_ERR_INTERNAL: i32 = -12;

/// Alignment of model-handle storage and of a session arena, in bytes.
pub const GLIMPSE_ALIGN: usize = 64;
const _: () = assert!(GLIMPSE_ALIGN == ALIGN && GLIMPSE_ALIGN >= align_of::<glimpse_session>());
const _: () = assert!(size_of::<glimpse_model>() <= GLIMPSE_MODEL_STORAGE_BYTES);
const _: () = assert!(size_of::<glimpse_session>() <= GLIMPSE_SESSION_STORAGE_BYTES);
/// Alignment model bytes need (a mapped file or flash address is page-aligned).
pub const GLIMPSE_MODEL_ALIGN: usize = 16;
/// Bytes of storage that hold a model handle on every target the library builds for
/// (`glimpse_model_size()` gives the exact figure, never more than this).
pub const GLIMPSE_MODEL_STORAGE_BYTES: usize = 2048;
/// Bytes of storage that hold a session handle on every target the library builds for
/// (`glimpse_session_size()` gives the exact figure, never more than this).
pub const GLIMPSE_SESSION_STORAGE_BYTES: usize = 8192;

/// `glimpse_frame.format`: 3 bytes per pixel, R, G, B.
pub const GLIMPSE_RGB888: u32 = 0;
/// `glimpse_frame.format`: 2 bytes per pixel, little-endian, R in bits 15..11.
pub const GLIMPSE_RGB565: u32 = 1;

const MODEL_MAGIC: u32 = 0x474c_4d4d; // "GLMM"
const SESSION_MAGIC: u32 = 0x474c_5353; // "GLSS"
const DEAD: u32 = 0xdead_0000;

/// Every opened model gets its own number, so a session can tell its model from a later
/// one opened into the same storage.
static NEXT_MODEL_ID: AtomicU32 = AtomicU32::new(1);

/// An opened, verified model. Opaque: it lives in `glimpse_model_size()` bytes the caller
/// gives to `glimpse_model_open`.
pub struct glimpse_model {
    magic: u32,
    id: u32,
    model: Model<'static>,
    /// The file mapping behind a model `glimpse_model_open_file` opened (unmapped at
    /// close; the handle itself stays allocated so its sessions can see it was closed).
    #[cfg(feature = "std")]
    mapping: Option<*mut glimpse_host::MappedImage>,
}

impl core::fmt::Debug for glimpse_model {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("glimpse_model")
            .field("open", &(self.magic == MODEL_MAGIC))
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl core::fmt::Debug for glimpse_session {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("glimpse_session")
            .field("live", &(self.magic == SESSION_MAGIC))
            .field("model_id", &self.model_id)
            .field("busy", &self.busy)
            .finish_non_exhaustive()
    }
}

/// A session: a model, a planned arena, a conversation and its KV cache, and an optional
/// frame stream. Opaque: it lives in the storage given to `glimpse_session_create`.
pub struct glimpse_session {
    magic: u32,
    model: *const glimpse_model,
    model_id: u32,
    busy: bool,
    max_prompt_bytes: usize,
    stream: Option<FrameStream>,
    session: Session<'static, 'static, CClock, CExec>,
}

/// How a session is planned and run. Get one from `glimpse_session_default_params()` and
/// change what you need.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct glimpse_session_params {
    /// Longest side of any frame the session will see, in pixels (0: a text-only session,
    /// no vision planned).
    pub max_frame_side: u32,
    /// Longest prompt (user text) in bytes.
    pub max_prompt_bytes: u32,
    /// Most tokens one call generates.
    pub max_new_tokens: u32,
    /// Context positions to plan for (0: the model's maximum, capped at 2048).
    pub max_context: u32,
    /// Threads to split the work across: 0 or 1 runs on the calling thread; more needs a
    /// host build (`GLIMPSE_ERR_PARAMS` on a bare-metal one).
    pub threads: u32,
    /// Non-zero: a frame stream keeps the prompt prefix before the picture in the KV
    /// cache from one frame to the next instead of prefilling it again.
    pub keep_prefix: u8,
    /// Microseconds from a monotonic clock, for the report's timings (NULL: the host's
    /// clock in a host build; no timings on bare metal).
    pub clock: Option<unsafe extern "C" fn(user: *mut c_void) -> u64>,
    /// Passed to `clock`.
    pub clock_user: *mut c_void,
}

/// A camera frame: `width x height` pixels, rows packed, in `format`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct glimpse_frame {
    /// The pixels: `width * height * bytes per pixel` bytes.
    pub data: *const u8,
    /// Bytes at `data`.
    pub len: usize,
    /// Pixels per row.
    pub width: u32,
    /// Rows.
    pub height: u32,
    /// `GLIMPSE_RGB888` or `GLIMPSE_RGB565`.
    pub format: u32,
}

/// What one call did. Times are microseconds from the session's clock (0 without one).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct glimpse_report {
    /// Positions this call prefilled.
    pub prompt_positions: u32,
    /// Positions already in the KV cache that the call kept.
    pub reused_positions: u32,
    /// Image tokens the call spliced in.
    pub image_tokens: u32,
    /// Tokens generated (the stop token included).
    pub generated: u32,
    /// 1 when a stop token ended generation.
    pub stopped_by_model: u8,
    /// 1 when a frame stream skipped the frame (too little change; nothing generated).
    pub skipped: u8,
    /// Tokenizer and chat template.
    pub tokenize_us: u64,
    /// Frame to pixels.
    pub preprocess_us: u64,
    /// Vision encoder.
    pub encoder_us: u64,
    /// Projector.
    pub projector_us: u64,
    /// Prefill.
    pub prefill_us: u64,
    /// Call start to first token.
    pub ttft_us: u64,
    /// Decode steps after the first token.
    pub decode_us: u64,
}

/// Receives each generated token: its id and the UTF-8 text it completes (`len` bytes,
/// not NUL-terminated, valid during the call only). Return 0 to go on, anything else to
/// stop generating (the call then returns `GLIMPSE_STOPPED`).
pub type glimpse_token_fn = Option<
    unsafe extern "C" fn(user: *mut c_void, token: u32, text: *const c_char, len: usize) -> i32,
>;

/// The session's clock: the caller's callback, else the host's, else none.
struct CClock {
    f: Option<unsafe extern "C" fn(user: *mut c_void) -> u64>,
    user: *mut c_void,
    #[cfg(feature = "std")]
    host: glimpse_host::HostClock,
}

impl MonotonicClock for CClock {
    fn now_us(&mut self) -> u64 {
        if let Some(f) = self.f {
            // SAFETY: the caller promised a callable clock (documented in the header).
            return unsafe { f(self.user) };
        }
        #[cfg(feature = "std")]
        return self.host.now_us();
        #[cfg(not(feature = "std"))]
        0
    }
}

/// Where a session's work runs: the calling thread, or a host thread pool.
enum CExec {
    Calling(glimpse_hal::Sequential),
    #[cfg(feature = "std")]
    Pool(glimpse_host::ThreadPool),
}

impl Executor for CExec {
    fn run(&mut self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        match self {
            CExec::Calling(s) => s.run(tasks, f),
            #[cfg(feature = "std")]
            CExec::Pool(p) => p.run(tasks, f),
        }
    }

    fn parallelism(&self) -> usize {
        match self {
            CExec::Calling(s) => s.parallelism(),
            #[cfg(feature = "std")]
            CExec::Pool(p) => p.parallelism(),
        }
    }
}

/// The callback asked to stop.
#[derive(Debug)]
struct StopRequested;

impl glimpse_hal::Error for StopRequested {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// A token sink over the C callback.
struct CSink {
    f: glimpse_token_fn,
    user: *mut c_void,
    stopped: bool,
}

impl ErrorType for CSink {
    type Error = StopRequested;
}

impl TokenSink for CSink {
    fn token(&mut self, id: u32, bytes: &[u8]) -> Result<(), StopRequested> {
        let Some(f) = self.f else { return Ok(()) };
        // SAFETY: the caller promised a callable callback; the text is valid for the call.
        let r = unsafe { f(self.user, id, bytes.as_ptr().cast(), bytes.len()) };
        if r != 0 {
            self.stopped = true;
            return Err(StopRequested);
        }
        Ok(())
    }
}

/// The code for a core error, with its detail kept for `glimpse_last_error`.
fn fail(e: &Error) -> i32 {
    set_last_error(format_args!("{e}"));
    match e {
        Error::Arena { .. } => GLIMPSE_ERR_ARENA,
        Error::Length { .. } => GLIMPSE_ERR_LENGTH,
        Error::Model(_) | Error::Tensor { .. } | Error::Shape { .. } | Error::DType { .. } => {
            GLIMPSE_ERR_MODEL
        }
        Error::Quant(_) => GLIMPSE_ERR_MODEL,
        Error::Config { .. } => GLIMPSE_ERR_PARAMS,
        Error::Frame(_) => GLIMPSE_ERR_FRAME,
        Error::Tokenizer(_) | Error::TokenOutOfRange { .. } | Error::EmptyInput => {
            GLIMPSE_ERR_PROMPT
        }
        Error::ContextOverflow { .. } => GLIMPSE_ERR_CONTEXT,
        _ => GLIMPSE_ERR_INTERNAL,
    }
}

/// A code with a fixed detail.
fn refuse(code: i32, detail: &str) -> i32 {
    set_last_error(format_args!("{detail}"));
    code
}

/// The error string of a code (a static NUL-terminated string; never NULL).
#[unsafe(no_mangle)]
pub extern "C" fn glimpse_strerror(code: i32) -> *const c_char {
    let s: &'static core::ffi::CStr = match code {
        GLIMPSE_OK => c"ok",
        GLIMPSE_STOPPED => c"stopped by the token callback",
        GLIMPSE_ERR_NULL => c"null pointer",
        GLIMPSE_ERR_LENGTH => c"wrong length",
        GLIMPSE_ERR_ALIGNMENT => c"misaligned buffer",
        GLIMPSE_ERR_ARENA => c"arena or storage too small",
        GLIMPSE_ERR_MODEL => c"invalid model",
        GLIMPSE_ERR_PARAMS => c"unsupported parameters",
        GLIMPSE_ERR_FRAME => c"invalid frame",
        GLIMPSE_ERR_PROMPT => c"invalid prompt",
        GLIMPSE_ERR_CONTEXT => c"context full",
        GLIMPSE_ERR_CLOSED => c"the session's model was closed",
        GLIMPSE_ERR_HANDLE => c"not a live handle, or a session in use",
        GLIMPSE_ERR_INTERNAL => c"internal error",
        _ => c"unknown error code",
    };
    s.as_ptr()
}

/// The library's version, "major.minor.patch" (static, NUL-terminated).
#[unsafe(no_mangle)]
pub extern "C" fn glimpse_version() -> *const c_char {
    const V: &core::ffi::CStr = match core::ffi::CStr::from_bytes_with_nul(
        concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes(),
    ) {
        Ok(v) => v,
        Err(_) => c"unknown",
    };
    V.as_ptr()
}

/// Bytes of storage a model handle needs (at `GLIMPSE_ALIGN`).
#[unsafe(no_mangle)]
pub extern "C" fn glimpse_model_size() -> usize {
    size_of::<glimpse_model>()
}

/// Open the model in `bytes` (which the caller keeps unchanged until
/// `glimpse_model_close`), verify every checksum and padding byte, and write its handle
/// into `storage` (`storage_len >= glimpse_model_size()`, aligned to `GLIMPSE_ALIGN`).
///
/// Errors: GLIMPSE_ERR_NULL, GLIMPSE_ERR_ALIGNMENT, GLIMPSE_ERR_ARENA (storage too small), GLIMPSE_ERR_MODEL.
///
/// # Safety
///
/// `bytes` points to `len` readable bytes and `storage` to `storage_len` writable bytes,
/// both living until the model is closed; `out` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glimpse_model_open(
    bytes: *const u8,
    len: usize,
    storage: *mut c_void,
    storage_len: usize,
    out: *mut *mut glimpse_model,
) -> i32 {
    if bytes.is_null() || storage.is_null() || out.is_null() {
        return refuse(
            GLIMPSE_ERR_NULL,
            "glimpse_model_open: bytes, storage and out must not be NULL",
        );
    }
    // SAFETY: `out` is non-null and writable (caller contract).
    unsafe { *out = ptr::null_mut() };
    if !(bytes as usize).is_multiple_of(GLIMPSE_MODEL_ALIGN) {
        return refuse(
            GLIMPSE_ERR_ALIGNMENT,
            "model bytes must start on a 16-byte boundary",
        );
    }
    if !(storage as usize).is_multiple_of(GLIMPSE_ALIGN) {
        return refuse(
            GLIMPSE_ERR_ALIGNMENT,
            "model storage must start on a GLIMPSE_ALIGN boundary",
        );
    }
    if storage_len < size_of::<glimpse_model>() {
        set_last_error(format_args!(
            "model storage holds {storage_len} bytes; glimpse_model_size() is {}",
            size_of::<glimpse_model>()
        ));
        return GLIMPSE_ERR_ARENA;
    }
    // SAFETY: `len` readable bytes that live until close (caller contract).
    let data: &'static [u8] = unsafe { core::slice::from_raw_parts(bytes, len) };
    let model = match Model::parse(data) {
        Ok(m) => m,
        Err(e) => return fail(&Error::Model(e)),
    };
    if let Err(e) = model.verify() {
        return fail(&Error::Model(e));
    }
    let handle = glimpse_model {
        magic: MODEL_MAGIC,
        id: NEXT_MODEL_ID.fetch_add(1, Ordering::Relaxed),
        model,
        #[cfg(feature = "std")]
        mapping: None,
    };
    let slot = storage.cast::<glimpse_model>();
    // SAFETY: `storage` is aligned (checked, GLIMPSE_ALIGN >= align_of) and large enough.
    unsafe {
        ptr::write(slot, handle);
        *out = slot;
    }
    GLIMPSE_OK
}

/// Close a model: its handle and every session made from it become unusable (their
/// calls return `GLIMPSE_ERR_CLOSED`); then the model bytes and storage may be reused.
/// NULL is ignored.
///
/// Errors: GLIMPSE_ERR_HANDLE (not an open model). Not thread-safe with calls on its sessions.
///
/// # Safety
///
/// `model` is NULL or a pointer `glimpse_model_open` returned whose storage is alive.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glimpse_model_close(model: *mut glimpse_model) -> i32 {
    if model.is_null() {
        return GLIMPSE_OK;
    }
    // SAFETY: caller contract; the magic check below catches most stale pointers.
    let m = unsafe { &mut *model };
    if m.magic != MODEL_MAGIC {
        return refuse(GLIMPSE_ERR_HANDLE, "glimpse_model_close: not an open model");
    }
    m.magic = DEAD;
    #[cfg(feature = "std")]
    if let Some(map) = m.mapping.take() {
        // SAFETY: `map` came from Box::into_raw in glimpse_model_open_file and is freed
        // once (taken out of the handle); the model that borrowed it is dead.
        drop(unsafe { std::boxed::Box::from_raw(map) });
    }
    GLIMPSE_OK
}

/// Host builds only: map the model file at `path` (NUL-terminated), verify it and open
/// it, with the handle allocated by the library. `glimpse_model_close` unmaps the file
/// (a few hundred bytes of handle stay allocated, so sessions still see that it was
/// closed). Errors: `GLIMPSE_ERR_NULL`, `GLIMPSE_ERR_MODEL` (unreadable file included).
///
/// # Safety
///
/// `path` is NUL-terminated; `out` is writable.
#[cfg(feature = "std")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glimpse_model_open_file(
    path: *const c_char,
    out: *mut *mut glimpse_model,
) -> i32 {
    if path.is_null() || out.is_null() {
        return refuse(GLIMPSE_ERR_NULL, "path and out must not be NULL");
    }
    // SAFETY: `out` is non-null and writable (caller contract).
    unsafe { *out = ptr::null_mut() };
    // SAFETY: NUL-terminated (caller contract).
    let path = unsafe { core::ffi::CStr::from_ptr(path) };
    let Ok(path) = path.to_str() else {
        return refuse(GLIMPSE_ERR_MODEL, "the path is not UTF-8");
    };
    let map = match glimpse_host::MappedImage::open(path) {
        Ok(m) => std::boxed::Box::into_raw(std::boxed::Box::new(m)),
        Err(e) => {
            set_last_error(format_args!("{path}: {e}"));
            return GLIMPSE_ERR_MODEL;
        }
    };
    // SAFETY: the mapping lives until glimpse_model_close frees it.
    let bytes: &'static [u8] = unsafe { (*map).bytes() };
    let storage = std::boxed::Box::into_raw(std::boxed::Box::new(Storage(
        [0; GLIMPSE_MODEL_STORAGE_BYTES],
    )));
    let mut handle = ptr::null_mut();
    // SAFETY: both buffers are valid for the program's life (the storage is never freed).
    let rc = unsafe {
        glimpse_model_open(
            bytes.as_ptr(),
            bytes.len(),
            storage.cast(),
            GLIMPSE_MODEL_STORAGE_BYTES,
            &mut handle,
        )
    };
    if rc != GLIMPSE_OK {
        // SAFETY: from Box::into_raw above, not shared with anything.
        unsafe {
            drop(std::boxed::Box::from_raw(map));
            drop(std::boxed::Box::from_raw(storage));
        }
        return rc;
    }
    // SAFETY: glimpse_model_open wrote a live handle there.
    unsafe {
        (*handle).mapping = Some(map);
        *out = handle;
    }
    GLIMPSE_OK
}

/// Handle storage the library allocates for `glimpse_model_open_file`.
#[cfg(feature = "std")]
#[repr(C, align(64))]
struct Storage([u8; GLIMPSE_MODEL_STORAGE_BYTES]);

/// The live model behind `model`, or the error code.
fn live_model<'m>(model: *const glimpse_model) -> Result<&'m glimpse_model, i32> {
    if model.is_null() {
        return Err(refuse(GLIMPSE_ERR_NULL, "model is NULL"));
    }
    if !(model as usize).is_multiple_of(align_of::<glimpse_model>()) {
        return Err(refuse(
            GLIMPSE_ERR_HANDLE,
            "not a model handle (misaligned)",
        ));
    }
    // SAFETY: non-null and aligned; that it points to a handle is the caller's promise,
    // which the magic number checks as far as it can.
    let m = unsafe { &*model };
    if m.magic != MODEL_MAGIC {
        return Err(refuse(GLIMPSE_ERR_HANDLE, "not an open model"));
    }
    Ok(m)
}

/// The parameters every session starts from: frames up to 1024 pixels a side, prompts up
/// to 256 bytes, 64 new tokens, the model's context (capped at 2048), the calling thread,
/// the prefix kept across frames, the host clock (none on bare metal).
#[unsafe(no_mangle)]
pub extern "C" fn glimpse_session_default_params() -> glimpse_session_params {
    glimpse_session_params {
        max_frame_side: 1024,
        max_prompt_bytes: 256,
        max_new_tokens: 64,
        max_context: 0,
        threads: 1,
        keep_prefix: 1,
        clock: None,
        clock_user: ptr::null_mut(),
    }
}

/// The core's options for `params` on `model`.
fn options(model: &Model<'_>, p: &glimpse_session_params) -> Result<SessionOptions, i32> {
    let side = (p.max_frame_side > 0).then_some(p.max_frame_side as usize);
    let mut o = SessionOptions::for_model(model, side, p.max_prompt_bytes as usize);
    o.max_new_tokens = p.max_new_tokens as usize;
    if p.max_context > 0 {
        o.plan.max_context = p.max_context as usize;
    }
    o.plan.kv_across_pictures = p.keep_prefix != 0;
    if p.threads > 1 && cfg!(not(feature = "std")) {
        return Err(refuse(
            GLIMPSE_ERR_PARAMS,
            "threads > 1 needs a host build of the library",
        ));
    }
    Ok(o)
}

/// Bytes of storage a session handle needs (at `GLIMPSE_ALIGN`; at most
/// `GLIMPSE_SESSION_STORAGE_BYTES`).
#[unsafe(no_mangle)]
pub extern "C" fn glimpse_session_size() -> usize {
    size_of::<glimpse_session>()
}

/// The exact arena size (`*bytes`) a session of `params` on `model` needs, from a
/// `GLIMPSE_ALIGN`-aligned start: what `glimpse plan MODEL --max-frame S --max-prompt B
/// --context N --emit c` (with `--stream` when `keep_prefix` is set) prints as
/// `GLIMPSE_ARENA_BYTES` for the same values.
///
/// Errors: GLIMPSE_ERR_NULL, GLIMPSE_ERR_HANDLE, GLIMPSE_ERR_PARAMS, GLIMPSE_ERR_MODEL.
///
/// # Safety
///
/// `model` is a live handle (or NULL), `params` and `bytes` are valid pointers (or NULL).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glimpse_session_arena_size(
    model: *const glimpse_model,
    params: *const glimpse_session_params,
    bytes: *mut usize,
) -> i32 {
    if params.is_null() || bytes.is_null() {
        return refuse(GLIMPSE_ERR_NULL, "params and bytes must not be NULL");
    }
    let m = match live_model(model) {
        Ok(m) => m,
        Err(code) => return code,
    };
    // SAFETY: non-null, caller contract.
    let p = unsafe { &*params };
    let opts = match options(&m.model, p) {
        Ok(o) => o,
        Err(code) => return code,
    };
    match ArenaPlan::new(&m.model, &opts.plan_options()) {
        Ok(plan) => {
            // SAFETY: non-null, caller contract.
            unsafe { *bytes = plan.total() };
            GLIMPSE_OK
        }
        Err(e) => fail(&e),
    }
}

/// Create a session of `params` on `model`: its handle in `storage` (`storage_len >=
/// glimpse_session_size()`, aligned to `GLIMPSE_ALIGN`), its buffers in `arena`
/// (`arena_len` bytes from a `GLIMPSE_ALIGN`-aligned start, at least what
/// `glimpse_session_arena_size` says). Storage, arena and model must outlive the
/// session. Nothing is allocated.
///
/// Errors: GLIMPSE_ERR_NULL, GLIMPSE_ERR_HANDLE, GLIMPSE_ERR_ALIGNMENT, GLIMPSE_ERR_ARENA, GLIMPSE_ERR_PARAMS, GLIMPSE_ERR_MODEL.
///
/// # Safety
///
/// `storage` and `arena` point to that many writable bytes that live until the session
/// is closed; the other pointers are valid (or NULL, which is refused).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glimpse_session_create(
    model: *const glimpse_model,
    params: *const glimpse_session_params,
    storage: *mut c_void,
    storage_len: usize,
    arena: *mut c_void,
    arena_len: usize,
    out: *mut *mut glimpse_session,
) -> i32 {
    if params.is_null() || storage.is_null() || arena.is_null() || out.is_null() {
        return refuse(
            GLIMPSE_ERR_NULL,
            "params, storage, arena and out must not be NULL",
        );
    }
    // SAFETY: non-null, caller contract.
    unsafe { *out = ptr::null_mut() };
    let m = match live_model(model) {
        Ok(m) => m,
        Err(code) => return code,
    };
    if !(arena as usize).is_multiple_of(GLIMPSE_ALIGN)
        || !(storage as usize).is_multiple_of(GLIMPSE_ALIGN)
    {
        return refuse(
            GLIMPSE_ERR_ALIGNMENT,
            "the session storage and the arena must start on a GLIMPSE_ALIGN boundary",
        );
    }
    // SAFETY: non-null, caller contract.
    let p = unsafe { &*params };
    let opts = match options(&m.model, p) {
        Ok(o) => o,
        Err(code) => return code,
    };
    if storage_len < size_of::<glimpse_session>() {
        set_last_error(format_args!(
            "session storage holds {storage_len} bytes; glimpse_session_size() is {}",
            size_of::<glimpse_session>()
        ));
        return GLIMPSE_ERR_ARENA;
    }
    let exec = if p.threads > 1 {
        #[cfg(feature = "std")]
        match glimpse_host::ThreadPool::new(p.threads as usize) {
            Ok(pool) => CExec::Pool(pool),
            Err(e) => {
                set_last_error(format_args!("starting {} threads: {e}", p.threads));
                return GLIMPSE_ERR_PARAMS;
            }
        }
        #[cfg(not(feature = "std"))]
        return refuse(
            GLIMPSE_ERR_PARAMS,
            "threads > 1 needs a host build of the library",
        );
    } else {
        CExec::Calling(glimpse_hal::Sequential)
    };
    let clock = CClock {
        f: p.clock,
        user: p.clock_user,
        #[cfg(feature = "std")]
        host: glimpse_host::HostClock::new(),
    };
    // SAFETY: `arena_len` writable bytes that outlive the session (caller contract).
    let rest: &'static mut [u8] =
        unsafe { core::slice::from_raw_parts_mut(arena.cast::<u8>(), arena_len) };
    // SAFETY: the model handle outlives its sessions (caller contract; checked by id on
    // every call).
    let model_ref: &'static Model<'static> = unsafe { &*ptr::addr_of!((*model).model) };
    let session = match Session::new(model_ref, rest, clock, opts) {
        Ok(s) => s.with_executor(exec),
        Err(Error::Arena { needed, .. }) => {
            set_last_error(format_args!(
                "arena of {arena_len} bytes; this session needs {needed}"
            ));
            return GLIMPSE_ERR_ARENA;
        }
        Err(e) => return fail(&e),
    };
    let handle = glimpse_session {
        magic: SESSION_MAGIC,
        model,
        model_id: m.id,
        busy: false,
        max_prompt_bytes: p.max_prompt_bytes as usize,
        stream: None,
        session,
    };
    let slot = storage.cast::<glimpse_session>();
    // SAFETY: aligned (checked) and at least `size_of` bytes (checked).
    unsafe {
        ptr::write(slot, handle);
        *out = slot;
    }
    GLIMPSE_OK
}

/// The live, idle session behind `s`, checked against its model.
fn live_session<'s>(s: *mut glimpse_session) -> Result<&'s mut glimpse_session, i32> {
    if s.is_null() {
        return Err(refuse(GLIMPSE_ERR_NULL, "session is NULL"));
    }
    let h = session_handle(s)?;
    // SAFETY: the model storage outlives the session (caller contract); its magic and id
    // tell whether it is still the model the session was made from.
    let m = unsafe { &*h.model };
    if m.magic != MODEL_MAGIC || m.id != h.model_id {
        return Err(refuse(GLIMPSE_ERR_CLOSED, "the session's model was closed"));
    }
    Ok(h)
}

/// The idle session handle at `s` (non-null), whatever became of its model.
fn session_handle<'s>(s: *mut glimpse_session) -> Result<&'s mut glimpse_session, i32> {
    if !(s as usize).is_multiple_of(align_of::<glimpse_session>()) {
        return Err(refuse(
            GLIMPSE_ERR_HANDLE,
            "not a session handle (misaligned)",
        ));
    }
    // SAFETY: non-null and aligned; the magic number checks the rest as far as it can.
    let h = unsafe { &mut *s };
    if h.magic != SESSION_MAGIC {
        return Err(refuse(GLIMPSE_ERR_HANDLE, "not a live session"));
    }
    if h.busy {
        return Err(refuse(
            GLIMPSE_ERR_HANDLE,
            "the session is in use (called from its own token callback?)",
        ));
    }
    Ok(h)
}

/// The frame `f` describes, checked.
fn frame_of<'f>(f: &glimpse_frame) -> Result<Frame<'f>, i32> {
    if f.data.is_null() {
        return Err(refuse(GLIMPSE_ERR_NULL, "frame data is NULL"));
    }
    let format = match f.format {
        GLIMPSE_RGB888 => PixelFormat::Rgb888,
        GLIMPSE_RGB565 => PixelFormat::Rgb565,
        other => {
            set_last_error(format_args!("unknown pixel format {other}"));
            return Err(GLIMPSE_ERR_FRAME);
        }
    };
    let need = (f.width as usize)
        .checked_mul(f.height as usize)
        .and_then(|n| n.checked_mul(format.bytes_per_pixel()));
    if need != Some(f.len) {
        set_last_error(format_args!(
            "frame of {}x{} needs {} bytes, got {}",
            f.width,
            f.height,
            need.unwrap_or(usize::MAX),
            f.len
        ));
        return Err(GLIMPSE_ERR_LENGTH);
    }
    Ok(Frame {
        width: f.width as usize,
        height: f.height as usize,
        format,
        // SAFETY: `len` readable bytes for the call (caller contract).
        data: unsafe { core::slice::from_raw_parts(f.data, f.len) },
    })
}

/// The prompt text, checked.
fn prompt_of<'p>(prompt: *const c_char, len: usize) -> Result<&'p str, i32> {
    if prompt.is_null() {
        return Err(refuse(GLIMPSE_ERR_NULL, "prompt is NULL"));
    }
    // SAFETY: `len` readable bytes for the call (caller contract).
    let bytes = unsafe { core::slice::from_raw_parts(prompt.cast::<u8>(), len) };
    core::str::from_utf8(bytes).map_err(|_| refuse(GLIMPSE_ERR_PROMPT, "the prompt is not UTF-8"))
}

fn write_report(out: *mut glimpse_report, r: &Report, skipped: bool) {
    if out.is_null() {
        return;
    }
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    let t = r.timings;
    let rep = glimpse_report {
        prompt_positions: n(r.prompt_positions),
        reused_positions: n(r.reused_positions),
        image_tokens: n(r.image_tokens),
        generated: n(r.generated),
        stopped_by_model: u8::from(r.stopped),
        skipped: u8::from(skipped),
        tokenize_us: t.tokenize_us,
        preprocess_us: t.preprocess_us,
        encoder_us: t.encoder_us,
        projector_us: t.projector_us,
        prefill_us: t.prefill_us,
        ttft_us: t.ttft_us,
        decode_us: t.decode_us,
    };
    // SAFETY: non-null, writable (caller contract).
    unsafe { *out = rep };
}

/// Run `f` on the live session with the busy flag set, mapping a callback stop.
fn with_session(
    s: *mut glimpse_session,
    prompt_len: usize,
    report: *mut glimpse_report,
    f: impl FnOnce(&mut glimpse_session, &mut CSink) -> Result<(Report, bool), Error>,
    sink: &mut CSink,
) -> i32 {
    let h = match live_session(s) {
        Ok(h) => h,
        Err(code) => return code,
    };
    if prompt_len > h.max_prompt_bytes {
        set_last_error(format_args!(
            "a prompt of {prompt_len} bytes; the session was planned for {}",
            h.max_prompt_bytes
        ));
        return GLIMPSE_ERR_PROMPT;
    }
    h.busy = true;
    let r = f(h, sink);
    h.busy = false;
    match r {
        Ok((rep, skipped)) => {
            write_report(report, &rep, skipped);
            GLIMPSE_OK
        }
        Err(Error::Sink(_)) if sink.stopped => {
            write_report(report, &Report::default(), false);
            GLIMPSE_STOPPED
        }
        Err(e) => fail(&e),
    }
}

/// Ask about a frame, or follow up on the conversation: with a `frame`, a new picture
/// and the first turn about it (the chat template's default system text); with `frame`
/// NULL, a follow-up turn that prefills only the new tokens. Tokens go to `callback` as
/// they are generated; `report` (may be NULL) gets the call's counts and timings.
///
/// A frame larger than `max_frame_side`, a prompt longer than `max_prompt_bytes` or a turn
/// that would overflow the context is refused before any work, and the conversation is
/// left as it was.
///
/// Errors: GLIMPSE_STOPPED, GLIMPSE_ERR_NULL, GLIMPSE_ERR_LENGTH, GLIMPSE_ERR_FRAME, GLIMPSE_ERR_PROMPT, GLIMPSE_ERR_CONTEXT, GLIMPSE_ERR_CLOSED, GLIMPSE_ERR_HANDLE. One thread at a time per session; the callback runs on the calling thread.
///
/// # Safety
///
/// `session` is a live handle; `frame` (or NULL) describes readable pixels; `prompt`
/// points to `prompt_len` bytes; `callback` (or NULL) is callable with `user`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glimpse_ask(
    session: *mut glimpse_session,
    frame: *const glimpse_frame,
    prompt: *const c_char,
    prompt_len: usize,
    callback: glimpse_token_fn,
    user: *mut c_void,
    report: *mut glimpse_report,
) -> i32 {
    let text = match prompt_of(prompt, prompt_len) {
        Ok(t) => t,
        Err(code) => return code,
    };
    let frame = if frame.is_null() {
        None
    } else {
        // SAFETY: non-null, caller contract.
        match frame_of(unsafe { &*frame }) {
            Ok(f) => Some(f),
            Err(code) => return code,
        }
    };
    let mut sink = CSink {
        f: callback,
        user,
        stopped: false,
    };
    with_session(
        session,
        prompt_len,
        report,
        |h, sink| {
            let picture = frame.map(ImageInput::Frame);
            Ok((h.session.run(Prompt::chat(text), picture, sink)?, false))
        },
        &mut sink,
    )
}

/// Forget the conversation (the next `glimpse_ask` starts fresh) and any frame stream.
///
/// Errors: GLIMPSE_ERR_NULL, GLIMPSE_ERR_HANDLE, GLIMPSE_ERR_CLOSED.
///
/// # Safety
///
/// `session` is a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glimpse_reset(session: *mut glimpse_session) -> i32 {
    match live_session(session) {
        Ok(h) => {
            h.session.reset();
            h.stream = None;
            GLIMPSE_OK
        }
        Err(code) => code,
    }
}

/// Start a frame stream on the session: each `glimpse_stream_frame` captions a frame with
/// the same prompt, keeping the prompt prefix (with `keep_prefix`), and skips a frame
/// whose 16x16 luma differs from the last captioned one by less than `min_change` (a
/// fraction of full scale; 0 captions every frame).
///
/// Errors: GLIMPSE_ERR_NULL, GLIMPSE_ERR_HANDLE, GLIMPSE_ERR_CLOSED.
///
/// # Safety
///
/// `session` is a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glimpse_stream_begin(
    session: *mut glimpse_session,
    min_change: f32,
) -> i32 {
    match live_session(session) {
        Ok(h) => {
            h.stream = Some(FrameStream::new(min_change));
            GLIMPSE_OK
        }
        Err(code) => code,
    }
}

/// Caption one frame of the stream started by `glimpse_stream_begin`. A skipped frame
/// generates nothing and sets `report->skipped`.
///
/// Errors: as glimpse_ask, and GLIMPSE_ERR_PARAMS before glimpse_stream_begin.
///
/// # Safety
///
/// As `glimpse_ask`, with `frame` non-NULL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glimpse_stream_frame(
    session: *mut glimpse_session,
    frame: *const glimpse_frame,
    prompt: *const c_char,
    prompt_len: usize,
    callback: glimpse_token_fn,
    user: *mut c_void,
    report: *mut glimpse_report,
) -> i32 {
    if frame.is_null() {
        return refuse(GLIMPSE_ERR_NULL, "frame is NULL");
    }
    let text = match prompt_of(prompt, prompt_len) {
        Ok(t) => t,
        Err(code) => return code,
    };
    // SAFETY: non-null, caller contract.
    let frame = match frame_of(unsafe { &*frame }) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let mut sink = CSink {
        f: callback,
        user,
        stopped: false,
    };
    with_session(
        session,
        prompt_len,
        report,
        |h, sink| {
            let Some(stream) = h.stream.as_mut() else {
                return Err(Error::Config {
                    what: "no frame stream: call glimpse_stream_begin first",
                });
            };
            let fr = stream.caption(&mut h.session, Prompt::chat(text), frame, sink)?;
            Ok((fr.run.unwrap_or_default(), fr.skipped))
        },
        &mut sink,
    )
}

/// End a session: its handle becomes unusable and the arena may be reused. A thread
/// pool it started is stopped. NULL is ignored.
///
/// Errors: GLIMPSE_ERR_HANDLE (not a live session, or called from its own callback).
///
/// # Safety
///
/// `session` is NULL or a handle whose arena is alive.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn glimpse_session_close(session: *mut glimpse_session) -> i32 {
    if session.is_null() {
        return GLIMPSE_OK;
    }
    let h = match session_handle(session) {
        Ok(h) => h,
        Err(code) => return code,
    };
    h.magic = DEAD;
    // SAFETY: the handle was written by glimpse_session_create and is dropped once (the
    // magic is dead from here on), which stops a thread pool it owns.
    unsafe { ptr::drop_in_place(ptr::addr_of_mut!(h.session)) };
    GLIMPSE_OK
}

#[cfg(all(feature = "panic-handler", not(feature = "std"), not(test)))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    // The library returns errors rather than panicking; a panic here is a bug, and a
    // bare-metal C program has nowhere to unwind to.
    loop {
        core::hint::spin_loop();
    }
}
