//! `#[derive(Cached)]` compiles in a crate that denies lints its output could trip (the key
//! parts are coerced to `&dyn Display`, not cast: an `as` cast there is a trivial cast).
#![deny(trivial_casts, trivial_numeric_casts)]

use caching_diesel::{CachedModel, ObjectKey};
use serde::{Deserialize, Serialize};

#[derive(caching_diesel::Cached, Serialize, Deserialize)]
struct User {
    id: i32,
    name: String,
}

#[derive(caching_diesel::Cached, Serialize, Deserialize)]
#[cached(belongs_to(User, foreign_key = author_id), belongs_to(User, foreign_key = editor_id))]
struct Post {
    id: i32,
    author_id: i32,
    editor_id: Option<i32>,
}

#[test]
fn derived_keys_are_the_documented_ones() {
    let post = Post {
        id: 3,
        author_id: 7,
        editor_id: Some(8),
    };
    assert_eq!(post.object_key(), ObjectKey::new("posts", &["3"]));
    assert_eq!(
        post.foreign_keys(),
        [
            ObjectKey::new("users", &["7"]),
            ObjectKey::new("users", &["8"])
        ]
    );
    let orphan = Post {
        editor_id: None,
        ..post
    };
    assert_eq!(orphan.foreign_keys(), [ObjectKey::new("users", &["7"])]);
    let user = User {
        id: 7,
        name: "fliggy".into(),
    };
    assert_eq!(user.object_key().as_str(), "o:users:7");
    assert_eq!(user.object_key().model(), "users");
}
