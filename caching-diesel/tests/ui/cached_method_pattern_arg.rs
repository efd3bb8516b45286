use caching_diesel::{cached_method, Cache};

struct Post;

impl Post {
    #[cached_method]
    fn sum(&self, cache: &Cache, (a, b): (i32, i32)) -> i32 {
        let _ = cache;
        a + b
    }
}

fn main() {}
