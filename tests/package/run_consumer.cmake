# cmake -P script behind the packaging tests. MODE=find_package installs xattn from
# XATTN_SOURCE_DIR into a prefix under WORK_DIR, then builds the consumer in
# tests/package/find_package against it; MODE=add_subdirectory builds the consumer in
# tests/package/add_subdirectory, which adds the source tree itself. Then it runs the consumer.
foreach(var MODE XATTN_SOURCE_DIR WORK_DIR GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "run_consumer.cmake: -D${var}=... is required")
  endif()
endforeach()

set(common -G "${GENERATOR}" -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_BUILD_TYPE=Release)
if(MAKE_PROGRAM)
  list(APPEND common -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${what} failed (${rc}): ${ARGN}")
  endif()
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(consumer_args)
if(MODE STREQUAL "find_package")
  set(prefix "${WORK_DIR}/prefix")
  # Top level here, so tests, benchmarks and examples would default ON: turn them off.
  run("configure xattn" ${CMAKE_COMMAND} -S "${XATTN_SOURCE_DIR}" -B "${WORK_DIR}/xattn-build" ${common}
      -DCMAKE_INSTALL_PREFIX=${prefix}
      -DXATTN_BUILD_TESTS=OFF -DXATTN_BUILD_BENCHMARKS=OFF -DXATTN_BUILD_EXAMPLES=OFF)
  run("install xattn" ${CMAKE_COMMAND} --install "${WORK_DIR}/xattn-build")
  list(APPEND consumer_args -DCMAKE_PREFIX_PATH=${prefix})
elseif(MODE STREQUAL "add_subdirectory")
  list(APPEND consumer_args -DXATTN_SOURCE_DIR=${XATTN_SOURCE_DIR})
else()
  message(FATAL_ERROR "run_consumer.cmake: unknown MODE '${MODE}'")
endif()

set(build "${WORK_DIR}/consumer-build")
run("configure consumer" ${CMAKE_COMMAND} -S "${CMAKE_CURRENT_LIST_DIR}/${MODE}" -B "${build}"
    ${common} ${consumer_args})
run("build consumer" ${CMAKE_COMMAND} --build "${build}" --parallel 2)
run("run consumer" "${build}/consumer")
message(STATUS "package.${MODE}: consumer built and ran")
