use caching_diesel::Cached;
use serde::{Deserialize, Serialize};

#[derive(Cached, Serialize, Deserialize)]
enum Status {
    Active { id: i32 },
    Gone { id: i32 },
}

fn main() {}
