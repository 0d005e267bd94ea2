# Debian 12's libxsimd-dev (8.1) exports the target xsimd with the link item "xtl", because it
# was configured with xtl present; without libxtl-dev installed every link then fails with
# "cannot find -lxtl". xsimd needs xtl only for xtl's complex type, which xattn does not use, so
# when no xtl target can be found the item is dropped. Included after find_package(xsimd) by
# xattn's CMakeLists.txt and by the installed xattnConfig.cmake.
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_xattn_xsimd_links xsimd INTERFACE_LINK_LIBRARIES)
  if(_xattn_xsimd_links AND "xtl" IN_LIST _xattn_xsimd_links)
    find_package(xtl QUIET CONFIG)
    if(NOT TARGET xtl)
      list(REMOVE_ITEM _xattn_xsimd_links xtl)
      set_target_properties(xsimd PROPERTIES INTERFACE_LINK_LIBRARIES "${_xattn_xsimd_links}")
    endif()
  endif()
  unset(_xattn_xsimd_links)
endif()
