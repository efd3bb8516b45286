use caching_diesel::Cached;
use serde::{Deserialize, Serialize};

#[derive(Cached, Serialize, Deserialize)]
struct User(i32, String);

fn main() {}
