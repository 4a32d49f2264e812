"""qcnode: a DICOM node that quality-checks chest radiographs as they are acquired."""

__version__ = "0.1.0"
