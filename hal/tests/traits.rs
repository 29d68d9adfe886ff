//! The small HAL traits: default methods, `&mut T` forwarding, SliceStore and Sequential.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use glimpse_hal::adapters::{DirectWeights, SliceStore, SliceStoreError, StoreSize, WeightStore};
use glimpse_hal::{
    Error, ErrorKind, ErrorType, Executor, FrameInfo, FrameSource, MonotonicClock, PixelFormat,
    Sequential, TokenSink,
};

/// Advances by a fixed step per reading, so elapsed times are predictable.
struct StepClock {
    now: u64,
    step: u64,
}

impl MonotonicClock for StepClock {
    fn now_us(&mut self) -> u64 {
        self.now += self.step;
        self.now
    }
}

fn elapsed_via<C: MonotonicClock>(mut c: C, since: u64) -> u64 {
    c.elapsed_us(since)
}

#[test]
fn clock_elapsed_saturates_and_forwards() {
    let mut clock = StepClock { now: 100, step: 7 };
    let t0 = clock.now_us(); // 107
    assert_eq!(clock.elapsed_us(t0), 7);
    assert_eq!(elapsed_via(&mut clock, t0), 14);
    assert_eq!(elapsed_via(&mut &mut clock, t0), 21);
    assert_eq!(
        clock.elapsed_us(u64::MAX),
        0,
        "a later `since` must not wrap"
    );
}

#[derive(Debug, PartialEq)]
struct SinkFull;

impl Error for SinkFull {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Other
    }
}

/// Buffers bytes until `finish`, which is what the default `finish` cannot do.
#[derive(Default)]
struct LineSink {
    pending: Vec<u8>,
    flushed: Vec<u8>,
    ids: Vec<u32>,
}

impl ErrorType for LineSink {
    type Error = SinkFull;
}

impl TokenSink for LineSink {
    fn token(&mut self, id: u32, bytes: &[u8]) -> Result<(), SinkFull> {
        if self.pending.len() + bytes.len() > 16 {
            return Err(SinkFull);
        }
        self.ids.push(id);
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkFull> {
        self.flushed.append(&mut self.pending);
        Ok(())
    }
}

/// Uses only the required method, so `finish` is the default.
struct CountingSink(usize);

impl ErrorType for CountingSink {
    type Error = core::convert::Infallible;
}

impl TokenSink for CountingSink {
    fn token(&mut self, _id: u32, _bytes: &[u8]) -> Result<(), Self::Error> {
        self.0 += 1;
        Ok(())
    }
}

fn emit<S: TokenSink>(mut sink: S, words: &[&str]) -> Result<(), S::Error> {
    for (i, w) in words.iter().enumerate() {
        sink.token(i as u32, w.as_bytes())?;
    }
    sink.finish()
}

#[test]
fn token_sinks_forward_finish_through_mut_refs() {
    let mut sink = LineSink::default();
    emit(&mut sink, &["a ", "cat"]).unwrap();
    assert_eq!(sink.flushed, b"a cat");
    assert!(sink.pending.is_empty(), "finish reached the real sink");
    assert_eq!(sink.ids, [0, 1]);
    assert_eq!(
        emit(&mut &mut sink, &["0123456789", "0123456789"]),
        Err(SinkFull)
    );

    let mut counting = CountingSink(0);
    emit(&mut counting, &["x", "y", "z"]).unwrap();
    assert_eq!(counting.0, 3);
}

/// A test-pattern camera: a gradient whose size is fixed at construction.
struct PatternCamera {
    width: u32,
    height: u32,
}

impl ErrorType for PatternCamera {
    type Error = ErrorKind;
}

impl FrameSource for PatternCamera {
    fn capture(&mut self, buf: &mut [u8]) -> Result<FrameInfo, ErrorKind> {
        let info = FrameInfo {
            width: self.width,
            height: self.height,
            format: PixelFormat::Rgb888,
        };
        let len = info.byte_len().ok_or(ErrorKind::InvalidInput)?;
        let frame = buf.get_mut(..len).ok_or(ErrorKind::InvalidInput)?;
        for (i, b) in frame.iter_mut().enumerate() {
            *b = i as u8;
        }
        Ok(info)
    }
}

fn grab<F: FrameSource>(mut f: F, buf: &mut [u8]) -> Result<FrameInfo, F::Error> {
    f.capture(buf)
}

#[test]
fn frame_sources_report_their_frames() {
    let mut cam = PatternCamera {
        width: 4,
        height: 3,
    };
    let mut buf = [0u8; 64];
    let info = grab(&mut cam, &mut buf).unwrap();
    assert_eq!((info.width, info.height), (4, 3));
    assert_eq!(info.byte_len(), Some(36));
    assert_eq!(buf[35], 35);
    assert_eq!(buf[36], 0, "nothing written past the frame");
    assert_eq!(
        grab(&mut cam, &mut buf[..35]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );

    assert_eq!(PixelFormat::Rgb565.bytes_per_pixel(), 2);
    let huge = FrameInfo {
        width: u32::MAX,
        height: u32::MAX,
        format: PixelFormat::Rgb888,
    };
    // (2^32 - 1)^2 * 3 exceeds u64, so this is None on every target.
    assert_eq!(huge.byte_len(), None);
}

fn read_via<W: WeightStore>(mut w: W, offset: u64, buf: &mut [u8]) -> Result<(), W::Error> {
    w.read(offset, buf)
}

#[test]
// The borrows are the point: they exercise the `&T` / `&mut T` impls.
#[allow(clippy::needless_borrows_for_generic_args)]
fn slice_store_reads_and_bounds() {
    let bytes: Vec<u8> = (0..=255u8).collect();
    let mut store = SliceStore::new(&bytes);
    assert_eq!(store.size_bytes(), 256);
    fn size_via<S: StoreSize>(s: S) -> u64 {
        s.size_bytes()
    }
    fn slice_len_via<D: DirectWeights>(d: D) -> usize {
        d.as_slice().len()
    }
    assert_eq!(size_via(&store), 256);
    assert_eq!(size_via(&mut store), 256);
    assert_eq!(store.as_slice().as_ptr(), bytes.as_ptr(), "zero-copy");
    assert_eq!(slice_len_via(&store), 256);
    assert_eq!(slice_len_via(&mut store), 256);

    let mut buf = [0u8; 4];
    store.read(10, &mut buf).unwrap();
    assert_eq!(buf, [10, 11, 12, 13]);
    read_via(&mut store, 252, &mut buf).unwrap();
    assert_eq!(buf, [252, 253, 254, 255]);
    store.read(256, &mut []).unwrap();

    for (offset, len) in [(253u64, 4usize), (256, 1), (257, 0), (u64::MAX, 4)] {
        let err = read_via(&mut &mut store, offset, &mut buf[..len]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfRange);
        assert_eq!(
            err,
            SliceStoreError::OutOfRange {
                offset,
                len,
                size: 256
            }
        );
    }
}

#[test]
fn sequential_runs_every_task_once_in_order() {
    let order = Mutex::new(Vec::new());
    let mut exec = Sequential;
    exec.run(5, &|i| order.lock().unwrap().push(i));
    assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);

    let calls = AtomicUsize::new(0);
    exec.run(0, &|_| {
        calls.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(calls.load(Ordering::Relaxed), 0);

    fn sum_squares<E: Executor>(mut e: E, n: usize) -> usize {
        let total = AtomicUsize::new(0);
        e.run(n, &|i| {
            total.fetch_add(i * i, Ordering::Relaxed);
        });
        total.into_inner()
    }
    assert_eq!(sum_squares(&mut exec, 10), (0..10).map(|i| i * i).sum());
    fn width<E: Executor>(e: E) -> usize {
        e.parallelism()
    }
    assert_eq!(width(&mut exec), 1);
}

/// A port with more workers overrides `parallelism`; `&mut` must forward the override.
struct Wide;

impl Executor for Wide {
    fn run(&mut self, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        (0..tasks).rev().for_each(f);
    }

    fn parallelism(&self) -> usize {
        4
    }
}

#[test]
fn executor_defaults_forward_through_mut_refs() {
    fn width<E: Executor>(e: E) -> usize {
        e.parallelism()
    }
    let mut wide = Wide;
    assert_eq!(width(&mut wide), 4);
    assert_eq!(width(&mut &mut wide), 4);
}

#[test]
fn error_kinds_are_their_own_errors() {
    assert_eq!(ErrorKind::Io.kind(), ErrorKind::Io);
    assert_eq!(
        ErrorKind::OutOfRange.to_string(),
        "access past the end of the medium"
    );
}
