"""Building blocks of the synthetic nuScenes-format world generator.

``road`` (procedural road geometry), ``traffic`` and ``scenario`` (what each scene contains),
``world`` (ego and agent motion), ``cameras`` (the sensor rig), ``ground`` and ``render`` (OpenCV
camera images), ``lidar`` (ray-cast point clouds), ``tables`` and ``scene_writer`` (the nuScenes JSON
tables and files) and ``map_expansion`` (the vector map). The entry point is
:func:`data_tools.synthetic_nuscenes.generate`.
"""
