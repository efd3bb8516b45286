use caching_diesel::Cached;
use serde::{Deserialize, Serialize};

#[derive(Cached, Serialize, Deserialize)]
struct User {
    id: i32,
}

#[derive(Cached, Serialize, Deserialize)]
#[cached(belongs_to(User, foreign_key = author))]
struct Addon {
    id: i32,
    author: Option<Vec<u8>>,
}

fn main() {}
