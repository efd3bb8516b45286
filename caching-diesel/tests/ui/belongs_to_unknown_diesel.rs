use caching_diesel::Cached;
use diesel::Queryable;
use serde::{Deserialize, Serialize};

#[derive(Cached, Serialize, Deserialize)]
struct User {
    id: i32,
}

#[derive(Queryable, Cached, Serialize, Deserialize)]
#[diesel(belongs_to(User, foreign_key = nope))]
struct Addon {
    id: i32,
    author_id: i32,
}

fn main() {}
