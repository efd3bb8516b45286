use caching_diesel::Cached;
use serde::{Deserialize, Serialize};

#[derive(Cached, Serialize, Deserialize)]
#[cached(sql_table = "")]
struct User {
    id: i32,
}

fn main() {}
