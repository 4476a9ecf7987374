"""DICOMweb: STOW-RS (store instances), each instance becoming a job."""
