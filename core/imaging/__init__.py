"""Reading X-rays (PNG, JPEG, DICOM), the fast PNG path, resampling, model input and screen copies."""
