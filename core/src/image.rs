//! Zero-copy weights-image reader (in progress).
#[derive(Debug)] pub struct Image; #[derive(Debug)] pub struct ImageError; #[derive(Debug)] pub struct TensorView;
