//! Image measurement and variants. Synchronous and CPU-bound: the caller
//! runs it on a blocking thread (the HTTP runtime keeps one, so at most one
//! image is decoded at a time per node and memory stays bounded).
//!
//! Order matters for decode bombs: the header is read first and its
//! declared size checked against `image_pixels_max`; only then is the image
//! decoded, and the decoder also runs under `image::Limits` (edge and
//! allocation caps), so a header that lies is stopped by the decoder too.

use std::{io::BufReader, path::Path};

use image::{DynamicImage, ImageReader, Limits, codecs::jpeg::JpegEncoder};

use super::MediaError;
use crate::config::MediaSettings;

/// A decoded image's measure and the variants made from it.
#[derive(Debug)]
pub struct Processed {
    /// Pixels of the original.
    pub width: u32,
    /// Pixels of the original.
    pub height: u32,
    /// JPEG thumbnail, longest edge at most `thumbnail_edge_px`.
    pub thumbnail: Variant,
    /// JPEG, longest edge at most `compressed_edge_px`.
    pub compressed: Variant,
}

/// One JPEG made from the original.
#[derive(Debug)]
pub struct Variant {
    /// The encoded bytes.
    pub jpeg: Vec<u8>,
    /// Pixels.
    pub width: u32,
    /// Pixels.
    pub height: u32,
}

/// Bytes per pixel the decoder may allocate at most (RGBA16), plus slack
/// for the decoder's own buffers.
const ALLOC_BYTES_PER_PIXEL: u64 = 8;
const ALLOC_SLACK_BYTES: u64 = 16 << 20;

fn limits(s: &MediaSettings) -> Limits {
    let mut l = Limits::default();
    // No edge may be longer than the whole pixel budget on one row.
    let edge = u32::try_from(s.image_pixels_max).unwrap_or(u32::MAX);
    l.max_image_width = Some(edge);
    l.max_image_height = Some(edge);
    l.max_alloc = Some(
        s.image_pixels_max
            .saturating_mul(ALLOC_BYTES_PER_PIXEL)
            .saturating_add(ALLOC_SLACK_BYTES),
    );
    l
}

fn reader(
    path: &Path,
    s: &MediaSettings,
) -> Result<ImageReader<BufReader<std::fs::File>>, MediaError> {
    let mut r = ImageReader::open(path)?
        .with_guessed_format()
        .map_err(MediaError::Io)?;
    r.limits(limits(s));
    Ok(r)
}

/// The declared size of the image at `path`, from its header only.
pub fn dimensions(path: &Path, s: &MediaSettings) -> Result<(u32, u32), MediaError> {
    reader(path, s)?
        .into_dimensions()
        .map_err(|e| bad(e, 0, 0, s))
}

/// Measures, checks and decodes the image at `path` and makes its variants.
pub fn process(path: &Path, s: &MediaSettings) -> Result<Processed, MediaError> {
    let (width, height) = dimensions(path, s)?;
    if u64::from(width) * u64::from(height) > s.image_pixels_max {
        return Err(MediaError::TooManyPixels {
            width,
            height,
            max: s.image_pixels_max,
        });
    }
    let img = reader(path, s)?
        .decode()
        .map_err(|e| bad(e, width, height, s))?;
    let thumbnail = variant(&img, s.thumbnail_edge_px, s.jpeg_quality)?;
    let compressed = variant(&img, s.compressed_edge_px, s.jpeg_quality)?;
    Ok(Processed {
        width,
        height,
        thumbnail,
        compressed,
    })
}

/// A decoder error as ours: a limit hit is a pixel refusal, the rest a bad
/// image.
fn bad(e: image::ImageError, width: u32, height: u32, s: &MediaSettings) -> MediaError {
    match e {
        image::ImageError::Limits(_) => MediaError::TooManyPixels {
            width,
            height,
            max: s.image_pixels_max,
        },
        image::ImageError::IoError(e) => MediaError::Io(e),
        other => MediaError::BadImage(other.to_string()),
    }
}

/// `img` scaled down (never up) to fit `edge`, as JPEG. Transparent pixels
/// are laid over white, since JPEG has no alpha.
fn variant(img: &DynamicImage, edge: u32, quality: u8) -> Result<Variant, MediaError> {
    let scaled = if img.width() > edge || img.height() > edge {
        img.thumbnail(edge, edge)
    } else {
        img.clone()
    };
    let rgb = if scaled.color().has_alpha() {
        let rgba = scaled.to_rgba8();
        let mut out = image::RgbImage::new(rgba.width(), rgba.height());
        for (o, p) in out.pixels_mut().zip(rgba.pixels()) {
            let a = u16::from(p[3]);
            for c in 0..3 {
                // Over white: c·a + 255·(1 − a), in 0..=255.
                o[c] = ((u16::from(p[c]) * a + 255 * (255 - a)) / 255) as u8;
            }
        }
        out
    } else {
        scaled.to_rgb8()
    };
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, quality)
        .encode_image(&rgb)
        .map_err(|e| MediaError::BadImage(e.to_string()))?;
    Ok(Variant {
        jpeg,
        width: rgb.width(),
        height: rgb.height(),
    })
}
