use caching_diesel::Cached;
use diesel::Queryable;
use serde::{Deserialize, Serialize};

#[derive(Queryable, Cached, Serialize, Deserialize)]
#[diesel(primary_key(a, nope))]
struct Pair {
    a: i32,
    b: i32,
}

fn main() {}
