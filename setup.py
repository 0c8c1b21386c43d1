"""Build fastwatch from `settings.ini`, the way nbdev projects do."""
from configparser import ConfigParser
from pathlib import Path

import setuptools

cfg = ConfigParser(delimiters=['='])
cfg.read(Path(__file__).parent / 'settings.ini')
cfg = cfg['DEFAULT']


def reqs(key: str) -> list[str]:
    return cfg.get(key, '').split()


licenses = {'apache2': 'Apache Software License 2.0'}
setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    description=cfg['description'],
    long_description=(Path(__file__).parent / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    keywords=cfg['keywords'],
    author=cfg['author'],
    author_email=cfg['author_email'],
    license=licenses[cfg['license']],
    python_requires=f">={cfg['min_python']}",
    packages=setuptools.find_packages(include=['fastwatch', 'fastwatch.*']),
    include_package_data=True,
    package_data={'fastwatch': ['view/app/*.ipynb', 'view/app/*.j2', 'view/app/static/*']},
    install_requires=reqs('requirements'),
    extras_require={
        'train': reqs('train_requirements'),
        'export': reqs('export_requirements'),
        'postgres': reqs('postgres_requirements'),
        'publish': reqs('publish_requirements'),
        'alerts': reqs('alerts_requirements'),
        'dev': reqs('dev_requirements') + reqs('train_requirements'),
    },
    entry_points={'console_scripts': cfg['console_scripts'].split()},
    zip_safe=False,
)
