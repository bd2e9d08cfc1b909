"""ROS 2 adapters over the model core: the captioner node, image conversion, launchers and the ask client."""
