"""gensynth's hand-written metrics as they were before issue 21 moved them to maintained libraries.

Kept only as the references the library-based metrics are tested against (same inputs, same weights): the FID
InceptionV3 and Fréchet distance, MS-SSIM and LPIPS, CIE-LAB/LBP colour and texture, improved precision/recall.
Nothing in the package imports them.
"""
