"""Registration: align a moving scan to a fixed scan, classically or with a learned network.

Conventions (on top of :mod:`segmorph.geometry`):

* A transform maps points of the **fixed** image's world (mm, LPS) to points of the **moving**
  image's world, as ITK does: the warped image is ``moving(T(x))`` sampled at every fixed voxel ``x``.
* Displacement and velocity fields live on the fixed image's grid, shape ``(B, n, *S)`` (or
  ``(n, *S)`` for one field), and hold world vectors in mm: component ``d`` is along world axis
  ``d`` (LPS), not along array axis ``d``. ``T(x) = x + u(x)``.
"""
