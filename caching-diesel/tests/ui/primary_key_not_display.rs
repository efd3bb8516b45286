use caching_diesel::Cached;
use serde::{Deserialize, Serialize};

#[derive(Cached, Serialize, Deserialize)]
struct Blob {
    id: Vec<u8>,
}

fn main() {}
