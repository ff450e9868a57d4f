from configparser import ConfigParser
import setuptools

# nbdev 2's standard setup.py: everything comes from settings.ini
config = ConfigParser(delimiters=['='])
config.read('settings.ini', encoding='utf-8')
cfg = config['DEFAULT']
lic = dict(apache2=('Apache Software License 2.0', 'OSI Approved :: Apache Software License'))[cfg['license']]
requirements = cfg.get('requirements', '').split()
setuptools.setup(
    name=cfg['repo'], license=lic[0], version=cfg['version'],
    description=cfg['description'], author=cfg['author'], author_email=cfg['author_email'],
    keywords=cfg['keywords'], url=cfg['git_url'],
    classifiers=['Programming Language :: Python :: 3', 'License :: ' + lic[1]],
    packages=setuptools.find_packages(include=['kd_nbs', 'kd_nbs.*']),
    include_package_data=True, install_requires=requirements,
    extras_require={'ray': cfg.get('ray_requirements', '').split()},   # kd-nbs run --executor ray
    python_requires='>=' + cfg['min_python'], zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d']},
)
