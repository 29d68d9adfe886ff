//! Writer -> reader round trip: every tensor's bytes, dims and dtype and the config come
//! back exactly, from memory and from a memory-mapped file.

mod image_common;

use glimpse_core::image::{ImageError, Model};
use glimpse_host::{MappedImage, write_image};
use glimpse_quant::layout::{DATA_ALIGN, Header};
use glimpse_tests::AlignedBytes;

fn assert_matches_input(img: &Model<'_>) {
    assert_eq!(img.config(), &image_common::config());
    let mut expected = image_common::tensors();
    expected.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(img.len(), expected.len());
    for (i, (t, e)) in img.iter().zip(&expected).enumerate() {
        assert_eq!(t.index as usize, i);
        assert_eq!(t.name, e.name);
        assert_eq!(t.dtype, e.dtype, "{}", e.name);
        assert_eq!(t.dims(), e.shape.as_slice(), "{}", e.name);
        assert_eq!(t.data, e.data.as_slice(), "{}", e.name);
        assert_eq!(t.offset % DATA_ALIGN as u64, 0);
        let found = img.find(&e.name).unwrap();
        assert_eq!(found.index, t.index);
        assert_eq!(found.data.as_ptr(), t.data.as_ptr(), "find must not copy");
    }
    for missing in [
        "",
        "decoder",
        "decoder.norm.weigh",
        "vision.stem.0.weight.x",
        "~",
    ] {
        assert_eq!(img.find(missing).unwrap_err(), ImageError::MissingTensor);
    }
}

#[test]
fn round_trip_in_memory() {
    let bytes = image_common::image();
    let buf = AlignedBytes::new(&bytes);
    let img = Model::parse(buf.as_slice()).unwrap();
    img.verify().unwrap();
    assert_eq!(img.file_len(), bytes.len() as u64);
    assert_matches_input(&img);

    // Typed views see the values that went in.
    let offs = img
        .find("tokenizer.token_offsets")
        .unwrap()
        .as_u32()
        .unwrap();
    let tok = img.find("tokenizer.token_bytes").unwrap().as_u8().unwrap();
    let id = 10; // "abc"
    assert_eq!(&tok[offs[id] as usize..offs[id + 1] as usize], b"abc");
    let merges = img.find("tokenizer.merges").unwrap();
    assert_eq!(merges.dims(), &[4, 4]);
    let m = merges.as_u32().unwrap();
    assert!(m.chunks(4).is_sorted_by_key(|q| (q[0], q[1])));
    let pos = img.find("decoder.position_ids").unwrap();
    assert_eq!(pos.as_i32().unwrap().len(), 5);
}

#[test]
fn writer_output_is_deterministic_and_sized() {
    let a = image_common::image();
    let b = image_common::image();
    assert_eq!(a, b);
    let builder = image_common::builder();
    assert_eq!(builder.file_len().unwrap(), a.len() as u64);
    let mut sink = Vec::new();
    assert_eq!(builder.write_to(&mut sink).unwrap(), a.len() as u64);
    assert_eq!(sink, a);
    let h = Header::decode(&a).unwrap();
    assert_eq!(h.file_len, a.len() as u64);
}

#[test]
fn round_trip_through_a_mapped_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sample.glim");
    let n = write_image(image_common::builder(), &path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), image_common::image());
    let m = MappedImage::open(&path).unwrap();
    assert_eq!(m.len() as u64, n);
    let img = m.verified().unwrap();
    assert_matches_input(&img);
}
