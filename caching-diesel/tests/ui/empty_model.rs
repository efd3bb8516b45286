use caching_diesel::Cached;
use serde::{Deserialize, Serialize};

#[derive(Cached, Serialize, Deserialize)]
#[cached(model = "")]
struct User {
    id: i32,
}

fn main() {}
