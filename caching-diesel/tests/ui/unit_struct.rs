use caching_diesel::Cached;
use serde::{Deserialize, Serialize};

#[derive(Cached, Serialize, Deserialize)]
struct Nothing;

fn main() {}
