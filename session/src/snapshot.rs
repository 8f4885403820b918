//! Screen snapshots for captures: the monitor holding the active window,
//! taken with xcap, scaled down to at most 1280 pixels wide and encoded as
//! PNG. The daemon hashes the image itself (it trusts no helper's hash).

use xcap::image::codecs::png::{CompressionType, FilterType, PngEncoder};
use xcap::image::{ExtendedColorType, ImageEncoder, RgbaImage, imageops};

/// Widest snapshot kept.
pub const MAX_WIDTH: u32 = 1280;

#[derive(Clone, Debug)]
pub struct Snapshot {
    pub png: Vec<u8>,
    pub width: u32,
    pub height: u32,
}

/// Snapshot of the monitor containing `point` (the active window's
/// centre), or the first monitor. The error says why there is no image
/// (no display, a Wayland compositor refusing, …).
pub fn take(point: Option<(i32, i32)>) -> Result<Snapshot, String> {
    let monitor = match point {
        Some((x, y)) => xcap::Monitor::from_point(x, y).or_else(|_| first_monitor()),
        None => first_monitor(),
    }
    .map_err(|e| format!("no monitor to capture: {e}"))?;
    let image = monitor
        .capture_image()
        .map_err(|e| format!("screen capture failed: {e}"))?;
    encode(&image)
}

fn first_monitor() -> xcap::XCapResult<xcap::Monitor> {
    xcap::Monitor::all()?
        .into_iter()
        .next()
        .ok_or_else(|| xcap::XCapError::new("no monitors"))
}

/// Downscales (keeping the aspect ratio) and encodes.
pub fn encode(image: &RgbaImage) -> Result<Snapshot, String> {
    let image = if image.width() > MAX_WIDTH {
        let height = (u64::from(image.height()) * u64::from(MAX_WIDTH) / u64::from(image.width()))
            .max(1) as u32;
        imageops::resize(image, MAX_WIDTH, height, imageops::FilterType::Triangle)
    } else {
        image.clone()
    };
    let mut png = Vec::new();
    PngEncoder::new_with_quality(&mut png, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::Rgba8,
        )
        .map_err(|e| format!("PNG encoding failed: {e}"))?;
    Ok(Snapshot {
        width: image.width(),
        height: image.height(),
        png,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_screens_are_scaled_to_1280_keeping_the_ratio() {
        let screen = RgbaImage::from_pixel(1920, 1080, xcap::image::Rgba([200, 10, 10, 255]));
        let snapshot = encode(&screen).unwrap();
        assert_eq!((snapshot.width, snapshot.height), (1280, 720));
        let decoded = xcap::image::load_from_memory(&snapshot.png)
            .unwrap()
            .to_rgba8();
        assert_eq!(decoded.get_pixel(640, 360).0, [200, 10, 10, 255]);
        let small = encode(&RgbaImage::new(800, 600)).unwrap();
        assert_eq!((small.width, small.height), (800, 600), "never scaled up");
    }
}
