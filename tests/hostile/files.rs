//! Hostile plugins: files (filled in below).
