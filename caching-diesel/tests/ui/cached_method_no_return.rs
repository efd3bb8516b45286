use caching_diesel::{cached_method, Cache};

struct Post;

impl Post {
    #[cached_method]
    fn touch(&self, cache: &Cache) {
        let _ = cache;
    }
}

fn main() {}
