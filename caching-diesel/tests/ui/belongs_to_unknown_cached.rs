use caching_diesel::Cached;
use serde::{Deserialize, Serialize};

#[derive(Cached, Serialize, Deserialize)]
struct User {
    id: i32,
}

#[derive(Cached, Serialize, Deserialize)]
#[cached(belongs_to(User, foreign_key = nope))]
struct Addon {
    id: i32,
    author_id: i32,
}

fn main() {}
