//! SpiNorStore against an in-memory NOR flash model that decodes the READ commands.

use std::cell::Cell;
use std::rc::Rc;

use embedded_hal::spi::{self, Operation, SpiDevice};
use glimpse_hal::adapters::{AddressMode, SpiNorError, SpiNorStore, StoreSize, WeightStore};
use glimpse_hal::{Error as _, ErrorKind};

/// Flash contents: a keyed hash of the address, so a store that sends the wrong address
/// (or truncates it to 3 bytes) reads different bytes, and parts of any size cost no memory.
fn flash_byte(seed: u64, addr: u64) -> u8 {
    let mut z = addr.wrapping_add(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as u8
}

fn expected(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| flash_byte(seed, offset + i))
        .collect()
}

/// Counters and switches the test keeps while the store owns the device.
#[derive(Default)]
struct Probe {
    transactions: Cell<usize>,
    data_bytes: Cell<u64>,
    last_opcode: Cell<u8>,
    /// Set if a read ran past the end of the part (a real part would wrap silently).
    overrun: Cell<bool>,
    /// Fault injection: every transaction fails while set.
    fail: Cell<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ModelError(spi::ErrorKind);

impl spi::Error for ModelError {
    fn kind(&self) -> spi::ErrorKind {
        self.0
    }
}

struct NorFlashModel {
    size: u64,
    seed: u64,
    probe: Rc<Probe>,
}

impl NorFlashModel {
    fn new(size: u64, seed: u64) -> (Self, Rc<Probe>) {
        let probe = Rc::new(Probe::default());
        (
            Self {
                size,
                seed,
                probe: probe.clone(),
            },
            probe,
        )
    }
}

impl spi::ErrorType for NorFlashModel {
    type Error = ModelError;
}

impl SpiDevice for NorFlashModel {
    fn transaction(&mut self, operations: &mut [Operation<'_, u8>]) -> Result<(), ModelError> {
        let p = &self.probe;
        p.transactions.set(p.transactions.get() + 1);
        if p.fail.get() {
            // A transfer that dies midway leaves garbage in the receive buffers.
            for op in operations.iter_mut() {
                if let Operation::Read(buf) = op {
                    buf.fill(0xEE);
                }
            }
            return Err(ModelError(spi::ErrorKind::Overrun));
        }
        let (cmd, reads) = match operations.split_first_mut() {
            Some((Operation::Write(cmd), reads)) => (*cmd, reads),
            _ => return Err(ModelError(spi::ErrorKind::FrameFormat)),
        };
        let mut addr = match cmd {
            [0x03, a2, a1, a0] => u64::from(u32::from_be_bytes([0, *a2, *a1, *a0])),
            [0x13, a3, a2, a1, a0] => u64::from(u32::from_be_bytes([*a3, *a2, *a1, *a0])),
            _ => return Err(ModelError(spi::ErrorKind::FrameFormat)),
        };
        p.last_opcode.set(cmd[0]);
        for op in reads {
            let Operation::Read(buf) = op else {
                return Err(ModelError(spi::ErrorKind::FrameFormat));
            };
            for b in buf.iter_mut() {
                if addr >= self.size {
                    p.overrun.set(true);
                    addr = 0;
                }
                *b = flash_byte(self.seed, addr);
                addr += 1;
            }
            p.data_bytes.set(p.data_bytes.get() + buf.len() as u64);
        }
        Ok(())
    }
}

/// xorshift64*: a seeded, dependency-free source of test offsets.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_reads<const N: usize>(page_size: usize, flash_size: u64, seed: u64) {
    let (model, probe) = NorFlashModel::new(flash_size, seed);
    let mut cache = vec![0u8; N * page_size + 7]; // spare bytes: the store must use only N pages
    let mut store = SpiNorStore::<_, N>::new(model, flash_size, page_size, &mut cache).unwrap();
    assert_eq!(store.size_bytes(), flash_size);
    let mut rng = Rng(seed | 1);
    let cache_bytes = (N * page_size) as u64;
    for i in 0..400 {
        // Mostly short reads near a few hot regions, some long ones that bypass the cache,
        // and every 50th read ending exactly at the end of the part.
        let len = match i % 10 {
            0 => rng.below(cache_bytes * 2 + 1) as usize,
            _ => rng.below(3 * page_size as u64 + 1) as usize,
        }
        .min(flash_size as usize);
        let offset = if i % 50 == 0 {
            flash_size - len as u64
        } else if i % 3 == 0 {
            rng.below(flash_size - len as u64 + 1)
        } else {
            (rng.below(4) * 1000).min(flash_size - len as u64)
        };
        let mut buf = vec![0xA5u8; len];
        store.read(offset, &mut buf).unwrap();
        assert_eq!(
            buf,
            expected(seed, offset, len),
            "page {page_size} pages {N} offset {offset} len {len}"
        );
    }
    let stats = store.stats();
    assert_eq!(stats.transactions, probe.transactions.get() as u64);
    assert_eq!(stats.bytes_transferred, probe.data_bytes.get());
    assert_eq!(stats.transactions, stats.misses + stats.bypassed);
    assert!(stats.hits > 0, "the hot regions should hit: {stats:?}");
    assert!(
        !probe.overrun.get(),
        "the store read past the end of the part"
    );
    assert_eq!(probe.last_opcode.get(), 0x03);
}

#[test]
fn random_reads_match_flash_for_several_geometries() {
    // An odd size so the last page is partial.
    let size = 100_003;
    random_reads::<1>(16, size, 1);
    random_reads::<1>(256, size, 2);
    random_reads::<4>(64, size, 3);
    random_reads::<4>(256, size, 4);
    random_reads::<8>(1024, size, 5);
    random_reads::<3>(4096, size, 6);
    random_reads::<16>(4096, size, 7);
}

#[test]
fn cache_hits_issue_no_transactions() {
    let (model, probe) = NorFlashModel::new(1 << 20, 9);
    let mut cache = [0u8; 4 * 256];
    let mut store = SpiNorStore::<_, 4>::new(model, 1 << 20, 256, &mut cache).unwrap();
    let mut buf = [0u8; 100];

    store.read(10, &mut buf[..10]).unwrap();
    assert_eq!(probe.transactions.get(), 1);
    assert_eq!(probe.data_bytes.get(), 256, "a miss fills a whole page");
    store.read(0, &mut buf).unwrap();
    assert_eq!(probe.transactions.get(), 1);
    assert_eq!(&buf[..], &expected(9, 0, 100)[..]);

    // Spans pages 0 and 1: only page 1 is fetched.
    store.read(200, &mut buf).unwrap();
    assert_eq!(probe.transactions.get(), 2);
    assert_eq!(&buf[..], &expected(9, 200, 100)[..]);
    store.read(200, &mut buf).unwrap();
    assert_eq!(probe.transactions.get(), 2);

    let s = store.stats();
    assert_eq!((s.hits, s.misses, s.bypassed), (4, 2, 0));
}

#[test]
fn replacement_is_least_recently_used() {
    let (model, probe) = NorFlashModel::new(1 << 20, 11);
    let mut cache = [0u8; 4 * 64];
    let mut store = SpiNorStore::<_, 4>::new(model, 1 << 20, 64, &mut cache).unwrap();
    let mut b = [0u8; 1];
    for page in 0..4u64 {
        store.read(page * 64, &mut b).unwrap();
    }
    store.read(0, &mut b).unwrap(); // page 0 is now the most recent
    assert_eq!(probe.transactions.get(), 4);
    store.read(4 * 64, &mut b).unwrap(); // evicts page 1, the least recent
    assert_eq!(probe.transactions.get(), 5);
    for page in [0u64, 2, 3, 4] {
        store.read(page * 64 + 5, &mut b).unwrap();
        assert_eq!(b[0], flash_byte(11, page * 64 + 5));
    }
    assert_eq!(
        probe.transactions.get(),
        5,
        "pages 0, 2, 3, 4 are all cached"
    );
    store.read(64, &mut b).unwrap();
    assert_eq!(probe.transactions.get(), 6, "page 1 was evicted");
}

#[test]
fn reads_as_large_as_the_cache_bypass_it() {
    let (model, probe) = NorFlashModel::new(1 << 16, 13);
    let mut cache = [0u8; 2 * 128];
    let mut store = SpiNorStore::<_, 2>::new(model, 1 << 16, 128, &mut cache).unwrap();
    let mut small = [0u8; 4];
    store.read(0, &mut small).unwrap();
    let mut big = vec![0u8; 1000];
    store.read(3, &mut big).unwrap();
    assert_eq!(big, expected(13, 3, 1000));
    assert_eq!(probe.transactions.get(), 2, "one fill, one direct read");
    store.read(0, &mut small).unwrap();
    assert_eq!(
        probe.transactions.get(),
        2,
        "the direct read evicted nothing"
    );
    assert_eq!(store.stats().bypassed, 1);
}

#[test]
fn out_of_range_reads_are_errors_without_transactions() {
    let size = 5000;
    let (model, probe) = NorFlashModel::new(size, 17);
    let mut cache = [0u8; 2 * 256];
    let mut store = SpiNorStore::<_, 2>::new(model, size, 256, &mut cache).unwrap();
    let mut buf = [0u8; 2];
    for (offset, len) in [(size - 1, 2), (size, 1), (u64::MAX, 1), (u64::MAX - 1, 2)] {
        let err = store.read(offset, &mut buf[..len]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::OutOfRange, "{offset} {len}");
        assert!(matches!(err, SpiNorError::OutOfRange { .. }));
    }
    // Empty reads are fine up to the end, not past it.
    store.read(size, &mut []).unwrap();
    assert_eq!(
        store.read(size + 1, &mut []).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(probe.transactions.get(), 0);
    store.read(size - 2, &mut buf).unwrap();
    assert_eq!(&buf[..], &expected(17, size - 2, 2)[..]);
    assert!(!probe.overrun.get());
}

#[test]
fn spi_errors_are_io_and_leave_no_stale_pages() {
    let (model, probe) = NorFlashModel::new(1 << 20, 19);
    let mut cache = [0u8; 2 * 256];
    let mut store = SpiNorStore::<_, 2>::new(model, 1 << 20, 256, &mut cache).unwrap();
    let mut buf = [0u8; 32];
    store.read(0, &mut buf).unwrap();
    store.read(256, &mut buf).unwrap();

    // Both slots are full, so the failed fill lands in page 0's slot, the least recent.
    probe.fail.set(true);
    let err = store.read(1000, &mut buf).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io);
    assert!(matches!(err, SpiNorError::Spi(_)));
    // The big-read path fails the same way.
    let mut big = [0u8; 600];
    assert_eq!(store.read(0, &mut big).unwrap_err().kind(), ErrorKind::Io);

    probe.fail.set(false);
    for offset in [0, 256, 1000] {
        store.read(offset, &mut buf).unwrap();
        assert_eq!(&buf[..], &expected(19, offset, 32)[..], "offset {offset}");
    }
}

#[test]
fn four_byte_addressing_above_16_mib() {
    let size = 64 << 20;
    let (model, probe) = NorFlashModel::new(size, 23);
    let mut cache = vec![0u8; 4 * 4096];
    let mut store = SpiNorStore::<_, 4>::new(model, size, 4096, &mut cache).unwrap();
    assert_eq!(store.address_mode(), AddressMode::FourByte);
    let mut rng = Rng(23);
    for _ in 0..200 {
        let len = rng.below(6000) as usize;
        // Bias towards the top 48 MiB, which a 3-byte address cannot reach.
        let offset = (16 << 20) + rng.below(size - (16 << 20) - len as u64 + 1);
        let mut buf = vec![0u8; len];
        store.read(offset, &mut buf).unwrap();
        assert_eq!(buf, expected(23, offset, len), "offset {offset:#x}");
    }
    let mut buf = [0u8; 16];
    store.read(size - 16, &mut buf).unwrap();
    assert_eq!(&buf[..], &expected(23, size - 16, 16)[..]);
    assert_eq!(probe.last_opcode.get(), 0x13);
    assert!(!probe.overrun.get());
}

#[test]
fn address_mode_follows_flash_size() {
    assert_eq!(AddressMode::for_size(16 << 20), AddressMode::ThreeByte);
    assert_eq!(AddressMode::for_size((16 << 20) + 1), AddressMode::FourByte);

    // Exactly 16 MiB still works with 3-byte addresses, up to the last byte.
    let size = 16 << 20;
    let (model, probe) = NorFlashModel::new(size, 29);
    let mut cache = [0u8; 256];
    let mut store = SpiNorStore::<_, 1>::new(model, size, 256, &mut cache).unwrap();
    let mut buf = [0u8; 8];
    store.read(size - 8, &mut buf).unwrap();
    assert_eq!(&buf[..], &expected(29, size - 8, 8)[..]);
    assert_eq!(probe.last_opcode.get(), 0x03);
}

#[test]
fn bad_configurations_are_rejected() {
    let mut cache = [0u8; 1024];
    let kind_of = |r: Result<SpiNorStore<'_, NorFlashModel, 4>, SpiNorError<ModelError>>| {
        r.map(|_| ()).unwrap_err().kind()
    };
    for page in [0, 8, 100, 255, 128 * 1024] {
        let (m, _) = NorFlashModel::new(1 << 20, 0);
        assert_eq!(
            kind_of(SpiNorStore::new(m, 1 << 20, page, &mut cache)),
            ErrorKind::InvalidInput,
            "page size {page}"
        );
    }
    let (m, _) = NorFlashModel::new(1 << 20, 0);
    let err = SpiNorStore::<_, 4>::new(m, 1 << 20, 512, &mut cache).unwrap_err();
    assert!(matches!(
        err,
        SpiNorError::CacheTooSmall {
            needed: 2048,
            given: 1024
        }
    ));
    let (m, _) = NorFlashModel::new(1 << 20, 0);
    assert!(matches!(
        SpiNorStore::<_, 0>::new(m, 1 << 20, 256, &mut cache).unwrap_err(),
        SpiNorError::CacheTooSmall { .. }
    ));
    let (m, _) = NorFlashModel::new(32 << 20, 0);
    assert_eq!(
        kind_of(SpiNorStore::with_address_mode(
            m,
            32 << 20,
            AddressMode::ThreeByte,
            256,
            &mut cache
        )),
        ErrorKind::InvalidInput
    );
    let (m, _) = NorFlashModel::new(0, 0);
    assert!(matches!(
        SpiNorStore::<_, 4>::new(m, (1 << 32) + 1, 256, &mut cache).unwrap_err(),
        SpiNorError::FlashTooLarge(_)
    ));
}

#[test]
fn the_store_works_through_mut_references() {
    fn read_twice<W: WeightStore>(mut w: W, buf: &mut [u8]) -> Result<(), W::Error> {
        w.read(0, buf)?;
        w.read(1, buf)
    }
    let (model, probe) = NorFlashModel::new(4096, 31);
    let mut cache = [0u8; 256];
    let mut store = SpiNorStore::<_, 1>::new(model, 4096, 256, &mut cache).unwrap();
    let mut buf = [0u8; 8];
    read_twice(&mut store, &mut buf).unwrap();
    read_twice(&mut &mut store, &mut buf).unwrap();
    assert_eq!(&buf[..], &expected(31, 1, 8)[..]);
    assert_eq!(probe.transactions.get(), 1);
    assert_eq!(store.stats().hits, 3);
    store.invalidate();
    store.reset_stats();
    read_twice(&mut store, &mut buf).unwrap();
    assert_eq!(probe.transactions.get(), 2);
    assert_eq!(store.stats().misses, 1);
    let model = store.release();
    assert_eq!(model.size, 4096);
}
